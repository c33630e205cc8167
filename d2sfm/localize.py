"""``python -m d2sfm.localize``: runs the command line of :mod:`d2sfm.commands.localize`.

Imported instead of run, this module puts the API function ``d2sfm.localize`` in its place, so that
``import d2sfm.localize`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.localize", run_name="__main__", alter_sys=True)
else:
    from d2sfm.api import localize

    sys.modules[__name__] = localize
