"""Measuring features and models against the truth: mean matching accuracy on HPatches-style
homographies (`mma`), its plots, the SIFT baseline reconstruction, and the parity check against the original
D2-Net code (`parity`).
"""
