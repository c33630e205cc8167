"""``python -m d2sfm.extract``: runs the command line of :mod:`d2sfm.commands.extract`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.extract", run_name="__main__", alter_sys=True)
