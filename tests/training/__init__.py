"""Tests of d2sfm.training: the loss, data and steps, against the original training code where present."""
