"""Keypoint refinement on dense D2 feature maps: patch alignment along tracks before mapping, and
the alignment of each 3D point's observations after mapping (`model_refinement`), with the patch sampling,
track building and keypoint adjustment they share.
"""
