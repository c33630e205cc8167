"""``python -m d2sfm.evaluate``: runs the command line of :mod:`d2sfm.commands.evaluate`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.evaluate", run_name="__main__", alter_sys=True)
