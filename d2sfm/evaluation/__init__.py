"""Measuring features and models against the truth: mean matching accuracy on HPatches-style
homographies (`mma`), its plots, the SIFT baseline reconstruction, the parity check against the original
D2-Net code (`parity`), and camera errors against ground truth (`ground_truth`, its angles from
`d2sfm.sfm.angles`).
"""
