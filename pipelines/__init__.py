"""Benchmark pipelines (Aachen, InLoc, HPatches, ETH); each knows its dataset layout and calls the d2sfm library."""
