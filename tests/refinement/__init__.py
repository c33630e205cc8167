"""Tests of d2sfm.refinement: patch sampling, patch alignment and keypoint refinement."""
