"""Tests of d2sfm.features: the network, checkpoints and weights, detection, batching and the image loader."""
