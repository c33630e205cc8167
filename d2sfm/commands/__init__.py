"""The command lines, and nothing else uses argparse: each module builds its options, calls the library
and decides what reaches the console. `python -m d2sfm.X` runs `d2sfm.commands.X` (the top-level `d2sfm/X.py`
modules are one-line shims that keep the documented commands).
"""
