"""An hloc-style SIFT features file for a photo folder, as hloc's own SIFT extractor writes one (pycolmap's SIFT
at the photo's resolution, RootSIFT descriptors D x N, keypoints with pixel centres at integers): the input of the
``reconstruct --features`` runs on SIFT keypoints in docs/benchmarks.md ("Holding distortion while mapping").

    python benchmarks/hloc_sift_features.py ../shared/data/sacre_coeur/images outputs/hloc_sift.h5
    python -m d2sfm.reconstruct outputs/sift_sc --images ../shared/data/sacre_coeur/images \\
        --features outputs/hloc_sift.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import d2sfm  # noqa: E402,F401  (before pycolmap: see README, "From Python, import d2sfm before pycolmap")


def main() -> None:
    import cv2
    import h5py
    import numpy as np
    import pycolmap
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path, help="folder of photos")
    parser.add_argument("output", type=Path, help="the hloc features file to write")
    args = parser.parse_args()
    options = pycolmap.FeatureExtractionOptions(sift=pycolmap.SiftExtractionOptions(
        {"first_octave": 0, "peak_threshold": 0.01, "normalization": pycolmap.Normalization.L1_ROOT}))
    sift = pycolmap.Sift(options=options, device=pycolmap.Device.cpu)
    photos = sorted(path for path in args.images.iterdir() if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    partial = args.output.with_name(args.output.name + ".part")
    with h5py.File(partial, "w") as handle:
        for path in tqdm(photos, desc="SIFT", unit="img"):
            gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
            keypoints, descriptors = sift.extract(np.ascontiguousarray(gray.astype(np.float32) / 255.0))
            root = descriptors / (np.abs(descriptors).sum(1, keepdims=True) + 1e-6)  # RootSIFT, as hloc's
            root = np.sqrt(root.clip(min=1e-6))
            root /= np.linalg.norm(root, axis=1, keepdims=True) + 1e-6
            group = handle.create_group(path.name)
            group.create_dataset("keypoints", data=(keypoints[:, :2] - 0.5).astype(np.float32))  # hloc's centres
            group.create_dataset("scales", data=keypoints[:, 2].astype(np.float32))
            group.create_dataset("oris", data=np.rad2deg(keypoints[:, 3]).astype(np.float32))
            group.create_dataset("scores", data=np.zeros(len(keypoints), np.float32))
            group.create_dataset("descriptors", data=root.T.astype(np.float32))
            group.create_dataset("image_size", data=np.array([gray.shape[1], gray.shape[0]]))
    partial.replace(args.output)
    print(f"wrote {args.output}: {len(photos)} photos")


if __name__ == "__main__":
    main()
