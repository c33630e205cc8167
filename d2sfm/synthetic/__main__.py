"""``python -m d2sfm.synthetic``: runs the command line of :mod:`d2sfm.commands.synthetic`."""

import runpy

runpy.run_module("d2sfm.commands.synthetic", run_name="__main__", alter_sys=True)
