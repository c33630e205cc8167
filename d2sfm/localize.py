"""``python -m d2sfm.localize``: runs the command line of :mod:`d2sfm.commands.localize`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.localize", run_name="__main__", alter_sys=True)
