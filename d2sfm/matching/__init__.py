"""Which images to match and how: pair lists (exhaustive, sequential, from a file, by global-descriptor
retrieval) in `pairs`; mutual-nearest-neighbour matching of descriptors lives beside it.
"""
