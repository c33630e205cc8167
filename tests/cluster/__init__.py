"""Tests of d2sfm.cluster: the Ray backend."""
