"""d2sfm: D2-Net features in a complete COLMAP pipeline."""

__version__ = "0.1.0"
