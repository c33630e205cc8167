"""Tests of d2sfm.io: features.h5 and matches.h5, images, atomic writes and the hloc export."""
