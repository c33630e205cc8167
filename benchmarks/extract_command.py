"""The whole extraction command, as a user runs it: ``python -m d2sfm.extract`` on a folder of photos, against the
original D2-Net ``extract_features.py`` on the same photos, side by side in one run.

    python benchmarks/extract_command.py --device cuda --count 220 --max-edge 1600 --reference /path/to/d2-net
    python benchmarks/extract_command.py --count 12 --max-edge 640 --pyramid SS        # a small CPU run

The photos are the ``--images`` folder's, scaled once to ``--max-edge`` (longest side) and saved as JPEG (quality
95), repeated under new names up to ``--count``: decoding a copy costs what decoding the original does. Each
command runs in its own process and is timed from start to exit (imports, CUDA start-up and model loading
included); d2sfm's ``--timings`` says where its time went (GPU-synchronised at stage boundaries, which costs it a
little overlap). The original script is run unchanged except for what current libraries no longer have:
``scipy.misc.imresize`` (PIL's bilinear resize, what it wrapped), ``imageio`` when it is not installed (PIL reads
the file) and its GPU indexing under current torch (see extract_speed.py); it runs in fp32 with TF32 off and
writes one .npz per photo, as it does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.extract_speed import Tf32, original_on_current_torch  # noqa: E402
from benchmarks.paths import REPO, SACRE_COEUR, WEIGHTS  # noqa: E402
from d2sfm.features.extraction import TIMED_STAGES

DEFAULT_PHOTOS = SACRE_COEUR
STAGES = TIMED_STAGES


def prepare_photos(source: Path, folder: Path, count: int, max_edge: int) -> list[Path]:
    """``count`` JPEG photos with their longest side ``max_edge``, cycling through the photos of ``source``."""
    from d2sfm.io.images import list_images, read_image_bgr

    encoded = []
    for name in list_images(source):
        image = read_image_bgr(source / name)
        scale = max_edge / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        encoded.append(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    if not encoded:
        raise SystemExit(f"error: {source}: no images; pass --images DIR")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo_{index:04d}.jpg"
        path.write_bytes(encoded[index % len(encoded)])
        paths.append(path)
    return paths


def run_original_script(spec: dict) -> None:
    """Child process: the original extract_features.py on the image list, with the shims the docstring names."""
    import scipy.misc
    from PIL import Image

    def imresize(image, factor):
        height, width = int(image.shape[0] * factor), int(image.shape[1] * factor)
        return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((width, height), Image.BILINEAR))

    scipy.misc.imresize = imresize
    if importlib.util.find_spec("imageio") is None:  # the original reads photos with it; PIL does the same here
        sys.modules["imageio"] = types.SimpleNamespace(imread=lambda path: np.asarray(Image.open(path)))
    sys.path.insert(0, spec["reference"])
    import lib.pyramid

    original_on_current_torch(lib.pyramid)
    Tf32(False).__enter__()  # fp32 for the rest of this process, like d2sfm's fp32
    sys.argv = ["extract_features.py", "--image_list_file", spec["list"], "--model_file", spec["weights"],
                "--output_extension", ".d2-net"] + (["--multiscale"] if spec["pyramid"] == "MS" else [])
    runpy.run_path(str(Path(spec["reference"]) / "extract_features.py"), run_name="__main__")


def time_command(command: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=DEFAULT_PHOTOS, help="photos to scale and repeat")
    parser.add_argument("--count", type=int, default=220, help="photos in the run (default 220)")
    parser.add_argument("--max-edge", type=int, default=1600, help="their longest side (default 1600)")
    parser.add_argument("--weights", type=Path, default=WEIGHTS)
    parser.add_argument("--reference", type=Path, default=None, help="checkout of the original D2-Net code: "
                        "adds its extract_features.py as the baseline")
    parser.add_argument("--reference-count", type=int, default=None,
                        help="run the original on only the first N photos (default: all); its images/s is then "
                        "over those")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=None, help="default: fp32 bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--pyramid", nargs="+", default=["SS", "MS"], choices=["SS", "MS"])
    parser.add_argument("--batch-size", type=int, default=None, help="d2sfm's --batch-size (default: its own)")
    parser.add_argument("--workers", type=int, default=None, help="d2sfm's --workers (default: its own)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_original_script(json.loads(args.child))
        return
    precisions = args.precision or (["fp32", "bf16"] if args.device.startswith("cuda") else ["fp32"])

    work = Path(tempfile.mkdtemp(prefix="d2sfm-extract-command-"))
    try:
        photos = prepare_photos(args.images, work / "photos", args.count, args.max_edge)
        rows = []
        for pyramid in args.pyramid:
            if args.reference:
                image_list = work / "list.txt"
                image_list.write_text("".join(f"{p}\n" for p in photos[: args.reference_count or len(photos)]))
                spec = {"reference": str(args.reference), "list": str(image_list), "weights": str(args.weights),
                        "pyramid": pyramid}
                # the script takes the GPU whenever it sees one: hide it for a CPU comparison
                env = None if args.device.startswith("cuda") else {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
                seconds = time_command([sys.executable, __file__, "--child", json.dumps(spec)], env)
                rows.append({"pyramid": pyramid, "command": "original extract_features.py", "precision": "fp32",
                             "wall": seconds, "timings": None, "images": len(image_list.read_text().split())})
                print(f"  {pyramid} original: {seconds:.1f} s", file=sys.stderr)
            for precision in precisions:
                timings_path = work / "timings.json"
                command = [sys.executable, "-m", "d2sfm.extract", str(work / "photos"), "-o",
                           str(work / "features.h5"), "--overwrite", "--quiet", "--weights", str(args.weights),
                           "--device", args.device, "--precision", precision, "--timings", str(timings_path)]
                command += ["--multiscale"] if pyramid == "MS" else []
                command += ["--batch-size", str(args.batch_size)] if args.batch_size else []
                command += ["--workers", str(args.workers)] if args.workers is not None else []
                seconds = time_command(command)
                rows.append({"pyramid": pyramid, "command": "python -m d2sfm.extract", "precision": precision,
                             "wall": seconds, "timings": json.loads(timings_path.read_text()), "images": len(photos)})
                print(f"  {pyramid} d2sfm {precision}: {seconds:.1f} s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{len(photos)} photos of {args.max_edge} px (longest side), JPEG, from {args.images}; device "
          f"{args.device}; batch size {args.batch_size or 'default'}, "
          f"workers {'default' if args.workers is None else args.workers}\n")
    print("| pyramid | command | precision | photos | whole command (s) | images/s | speed-up | images/s in the loop | "
          + " | ".join(f"{stage} (s)" for stage in STAGES)
          + " | peak GPU memory, tensors / reserved (GiB) | peak RSS (GiB) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(STAGES) + "---: | ---: |")
    for row in rows:
        baseline = next((r for r in rows if r["pyramid"] == row["pyramid"] and r["timings"] is None), None)
        rate = row["images"] / row["wall"]
        speedup = f"{rate / (baseline['images'] / baseline['wall']):.2f}x" if baseline else "n/a"
        timings = row["timings"]
        if timings:
            loop = f"{timings['images_per_second_in_loop']:.2f}"
            stages = " | ".join(f"{timings['seconds'].get(stage, 0.0):.1f}" for stage in STAGES)
            gpu = (f"{timings['peak_gpu_memory_mb'] / 1024:.2f} / {timings['peak_gpu_reserved_mb'] / 1024:.2f}"
                   if timings["peak_gpu_memory_mb"] else "n/a")
            rss = f"{timings['peak_rss_mb'] / 1024:.2f}"
        else:
            loop, stages, gpu, rss = "n/a", " | ".join("n/a" for _ in STAGES), "n/a", "n/a"
        print(f"| {row['pyramid']} | {row['command']} | {row['precision']} | {row['images']} | {row['wall']:.1f} | "
              f"{rate:.2f} | {speedup} | {loop} | {stages} | {gpu} | {rss} |")
    print("\nWhole command: from process start to exit. 'Decoding' is the time d2sfm's loader workers spend on it, "
          "which runs while the network works; 'waiting for images' is the part of it the main loop could not hide. "
          "Writing runs in a thread beside the network.")


if __name__ == "__main__":
    main()
