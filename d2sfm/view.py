"""``python -m d2sfm.view``: runs the command line of :mod:`d2sfm.commands.view`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.view", run_name="__main__", alter_sys=True)
