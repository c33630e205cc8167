"""Per-worker shards into one features.h5: a merge (what ``--ray`` does) against HDF5 external links.

    python benchmarks/shard_merge.py --images 2000 --keypoints 4000

Writes two shards of features of realistic size (random values: only the bytes matter here), then (a) merges them
into one file with ``FeatureWriter.copy_from``, atomically per image, and (b) makes a file of external links to
them. Prints the time of each, the time to read every image back from the result, and how many images a reader that
lists entries with ``visititems`` (d2sfm's ``list_entries``, hloc's ``list_h5_names``) finds in each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from d2sfm.io.features import Features  # noqa: E402
from d2sfm.io.h5 import FeatureWriter, list_entries, read_features

SETTINGS = {"benchmark": "shard_merge"}


def write_shard(path: Path, names: list[str], keypoints: int, rng: np.random.Generator) -> None:
    writer = FeatureWriter(path, SETTINGS)
    for name in names:
        writer.write(name, Features(
            keypoints=rng.uniform(0, 1600, (keypoints, 2)).astype(np.float32),
            scales=np.ones(keypoints, np.float32), scores=rng.random(keypoints).astype(np.float32),
            descriptors=rng.standard_normal((keypoints, 512)).astype(np.float16), image_size=(1600, 1200),
            global_descriptor=rng.standard_normal(512).astype(np.float32)))


def read_all(path: Path, names: list[str]) -> float:
    start = time.perf_counter()
    for name in names:
        read_features(path, name)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--keypoints", type=int, default=4000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        names = [f"db/{index:05d}.jpg" for index in range(args.images)]
        shards = [work / "worker-0.h5", work / "worker-1.h5"]
        write_shard(shards[0], names[0::2], args.keypoints, rng)
        write_shard(shards[1], names[1::2], args.keypoints, rng)
        size_mb = sum(shard.stat().st_size for shard in shards) / 2**20

        start = time.perf_counter()
        merged = FeatureWriter(work / "merged.h5", SETTINGS)
        for shard in shards:
            merged.copy_from(shard)
        merge_seconds = time.perf_counter() - start

        start = time.perf_counter()
        with h5py.File(work / "linked.h5", "w") as handle:
            for index, name in enumerate(names):
                handle[name] = h5py.ExternalLink(str(shards[index % 2]), name)
        link_seconds = time.perf_counter() - start

        rows = [("merge into one file (atomic per image)", merge_seconds, read_all(work / "merged.h5", names),
                 len(list_entries(work / "merged.h5"))),
                ("external links to the shards", link_seconds, read_all(work / "linked.h5", names),
                 len(list_entries(work / "linked.h5")))]
    print(f"{args.images} images of {args.keypoints} keypoints (float16 descriptors), {size_mb:.0f} MiB in two "
          "shards.\n")
    print("| result file | make it s | per image ms | read every image back s | images a visititems reader lists |")
    print("|---|---:|---:|---:|---:|")
    for label, make, read, listed in rows:
        print(f"| {label} | {make:.1f} | {1000 * make / args.images:.2f} | {read:.1f} | {listed} of {args.images} |")


if __name__ == "__main__":
    main()
