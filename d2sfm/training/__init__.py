"""Training D2-Net (paper section 3): soft detection, the describe-and-detect loss, training pairs with exact
correspondences (homographies of any photos, MegaDepth depth maps) and the loop itself (``trainer.train`` with a
``TrainingConfig``: what ``python -m d2sfm.train`` runs)."""
