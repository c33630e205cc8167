"""Tests of d2sfm.pipeline: the stage runner and the reconstruct flow."""
