"""Files on disk, and nothing that needs a network: features.h5 and matches.h5 (`h5`), the in-memory `Features`
record, the one place where keypoint conventions are converted (`keypoints`), image listing and reading (`images`),
atomic writes and folder swaps (`atomic`), COLMAP model files checked before pycolmap reads them (`model_files`),
PLY and MVS map files. The lowest layer: it imports no other d2sfm package and never imports torch, so commands
that only read or convert files start fast.
"""
