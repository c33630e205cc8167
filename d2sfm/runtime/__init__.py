"""The process a pipeline runs in, below every other layer: which torch device to use (`device`), how long each
stage took (`stage_clock`), a writer thread that overlaps writing with the network (`background`), loader
processes that end with their parent (`orphans`) and the lock that keeps two runs out of one output folder
(`run_lock`). Nothing here knows about features or models.
"""
