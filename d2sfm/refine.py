"""``python -m d2sfm.refine``: runs the command line of :mod:`d2sfm.commands.refine`.

Imported instead of run, this module puts the API function ``d2sfm.refine`` in its place, so that
``import d2sfm.refine`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.refine", run_name="__main__", alter_sys=True)
else:
    from d2sfm.api import refine

    sys.modules[__name__] = refine
