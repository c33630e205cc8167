"""``python -m d2sfm.reconstruct``: runs the command line of :mod:`d2sfm.commands.reconstruct`."""

import runpy

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.reconstruct", run_name="__main__", alter_sys=True)
