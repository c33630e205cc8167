"""What keypoint refinement of a database can be told, apart from the code that does it: the configuration imports
this without pycolmap, so extraction and matching run on machines that have none (a GPU box, a cluster worker)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from d2sfm.refinement.feature_patches import PatchSettings
from d2sfm.refinement.keypoint_adjustment import AdjustmentSettings
from d2sfm.refinement.patch_alignment import AlignmentSettings

METHODS = ("patch", "featuremetric")


@dataclass
class RefineSettings:
    method: str = "patch"
    alignment: AlignmentSettings = field(default_factory=AlignmentSettings)  # method "patch"
    patches: PatchSettings = field(default_factory=PatchSettings)  # method "featuremetric"
    adjustment: AdjustmentSettings = field(default_factory=AdjustmentSettings)

    def as_dict(self) -> dict:
        if self.method == "patch":
            return {"method": self.method, **self.alignment.as_dict()}
        return {"method": self.method, **self.patches.as_dict(), **asdict(self.adjustment)}
