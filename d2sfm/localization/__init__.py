"""Camera localization against a reference model: the reference built from a benchmark's poses
(`reference_model`), 2D-3D registration of queries (`registration`), pose files (`poses`), pose scores at the
benchmarks' thresholds (`pose_scores`) and submission files (`submission`).
"""
