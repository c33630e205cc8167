"""``python -m d2sfm.extract``: runs the command line of :mod:`d2sfm.commands.extract`.

Imported instead of run, this module puts the API function ``d2sfm.extract`` in its place, so that
``import d2sfm.extract`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.extract", run_name="__main__", alter_sys=True)
else:
    from d2sfm.api import extract

    sys.modules[__name__] = extract
