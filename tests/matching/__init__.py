"""Tests of d2sfm.matching: mutual nearest neighbours and pair lists."""
