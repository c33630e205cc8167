"""``python -m d2sfm.train``: runs the command line of :mod:`d2sfm.commands.train`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.train", run_name="__main__", alter_sys=True)
