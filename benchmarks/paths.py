"""Where the benchmarks find the repository and the shared data, defined once: ``D2SFM_SHARED`` (a copy of
../shared elsewhere, as on a GPU machine that receives only the checkout) then moves every script's inputs, as it
moves the tests'."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("D2SFM_SHARED", REPO.parent / "shared"))
WEIGHTS = SHARED / "weights" / "d2_hed_vgg16.pth"
SACRE_COEUR = SHARED / "data" / "sacre_coeur" / "images"
