"""``python -m d2sfm.viz``: runs the command line of :mod:`d2sfm.commands.viz`."""

import runpy

runpy.run_module("d2sfm.commands.viz", run_name="__main__", alter_sys=True)
