"""``python -m d2sfm.match``: runs the command line of :mod:`d2sfm.commands.match`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.match", run_name="__main__", alter_sys=True)
