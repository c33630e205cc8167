"""Tests of d2sfm.sfm: the COLMAP database and dense MVS."""
