"""``python -m d2sfm.match``: runs the command line of :mod:`d2sfm.commands.match`.

Imported instead of run, this module puts the API function ``d2sfm.match`` in its place, so that
``import d2sfm.match`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.match", run_name="__main__", alter_sys=True)
else:
    from d2sfm.api import match

    sys.modules[__name__] = match
