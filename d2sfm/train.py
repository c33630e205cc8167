"""``python -m d2sfm.train``: runs the command line of :mod:`d2sfm.commands.train`.

Imported instead of run, this module puts the API function ``d2sfm.train`` in its place, so that
``import d2sfm.train`` cannot hide the function behind a module of the same name.
"""

import runpy
import sys

if __name__ == "__main__":
    runpy.run_module("d2sfm.commands.train", run_name="__main__", alter_sys=True)
else:
    from d2sfm.training.trainer import train

    sys.modules[__name__] = train
