"""The Ray backend: extraction and matching spread over the workers of a Ray cluster, writing the same
features.h5 and matches.h5 as the single-process loops. Optional (the `ray` extra); nothing below imports it.
"""
