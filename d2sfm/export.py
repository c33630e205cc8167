"""``python -m d2sfm.export``: runs the command line of :mod:`d2sfm.commands.export`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.export", run_name="__main__", alter_sys=True)
