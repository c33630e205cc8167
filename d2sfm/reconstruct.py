"""``python -m d2sfm.reconstruct``: runs the command line of :mod:`d2sfm.commands.reconstruct`.

Imported instead of run, this module puts the API function ``d2sfm.reconstruct`` in its place, so that
``import d2sfm.reconstruct`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.reconstruct", run_name="__main__", alter_sys=True)
else:
    from d2sfm.api import reconstruct

    sys.modules[__name__] = reconstruct
