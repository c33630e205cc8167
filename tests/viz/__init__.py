"""Tests of d2sfm.viz: the model picture, drawings and the browser viewer."""
