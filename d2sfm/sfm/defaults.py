"""The mapping and dense defaults the configuration shows, apart from the stages that use them: the configuration
imports this without pycolmap, so extraction and matching run on machines that have none."""

# Mapper options for D2 features. COLMAP's defaults suit SIFT; D2 gives fewer, less precisely placed matches per
# pair (Sacre Coeur: a median of ~120 inliers per verified pair multi-scale, ~55 single-scale, ~145 for SIFT), and
# with COLMAP's values the mapper leaves images out or stops at a few images depending on its random seed
# (docs/benchmarks.md, "SfM on real photos"): the initial pair must have >= 100 inliers *and* a 16 degree
# triangulation angle, which few D2 pairs have, and each new image needs 30 inliers at a 25% ratio.
D2_ABS_POSE_MIN_INLIERS = 15  # COLMAP: 30
D2_ABS_POSE_MIN_INLIER_RATIO = 0.1  # COLMAP: 0.25
D2_INIT_MIN_TRI_ANGLE = 8.0  # degrees; COLMAP: 16
DEFAULT_MESH_TRIM = 10.0  # COLMAP's: drop the surface where Poisson's sampling density is below this

# The names of the mapping choices (their pycolmap values live beside the stages that use them)
MAPPERS = ("incremental", "global")
CAMERA_MODES = ("auto", "single", "per-image", "per-folder")  # d2sfm.sfm.database
INTRINSICS_REFINEMENTS = ("colmap", "none", "focal", "all")  # d2sfm.sfm.cameras
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")  # offered
