"""``python -m d2sfm.refine``: runs the command line of :mod:`d2sfm.commands.refine`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.refine", run_name="__main__", alter_sys=True)
