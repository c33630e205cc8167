"""Scenes with known truth, rendered on the fly: the embedded courtyard the demo and the tests use
(`scene`), random homographies (`homographies`) and day-to-night photometric changes (`photometric`).
"""
