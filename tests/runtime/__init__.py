"""Tests of d2sfm.runtime: the background writer."""
