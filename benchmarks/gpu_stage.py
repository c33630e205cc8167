"""Pack what each call of the GPU acceptance run needs into a folder that travels with the checkout (docs/gpu.md).

    python benchmarks/gpu_stage.py main              # .gpu-stage/main, for the first call
    python benchmarks/gpu_stage.py colmap            # .gpu-stage/colmap, for the second (prepare it beforehand)
    python benchmarks/gpu_stage.py handoff DIR       # the first call's report.json and handoff.tar into it

A lent GPU machine has torch with CUDA, numpy, h5py, OpenCV, SciPy and tqdm, but no pycolmap and no Ray, cannot
reach the internet, and receives at most 64 MiB per call (the checkout included). So:

* main: the weights (30 MB), the Sacre Coeur photos, the original code's reference outputs, and Ray: its wheel for
  the machine's Python, less what a local cluster never loads (the Java jars, the dashboard's web front end, tests
  and the libraries built on Ray), recompressed with xz (79 MB -> about 21 MB), with the dependencies that machine
  lacks (jsonschema and its three);
* colmap: the CUDA build of pycolmap (a 73 MB wheel, about 44 MB as xz), the CUDA 12 runtime it links (that
  machine's CUDA is 13; its libcurand.so.10 serves both), the X11 libraries its OpenGL part links (Debian's
  packages, unpacked with dpkg -x there), the photos, and the first call's report.json and handoff.tar.

Each folder is checked against the limit together with the checkout, and refused with the sizes when over.
Wheels come from PyPI for ``--python`` (the machine's, 3.12) and manylinux x86-64; nothing here is committed
(.gpu-stage/ is ignored).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.paths import REPO, SACRE_COEUR, SHARED, WEIGHTS  # noqa: E402

STAGE = REPO / ".gpu-stage"
LIMIT_MIB = 64
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_35_x86_64")
# What a local Ray cluster never loads: the Java worker, the dashboard's web pages (the dashboard is off), tests,
# and the libraries built on Ray. Checked by loading Ray from the stripped copy and running d2sfm's --ray commands.
RAY_UNUSED = ("ray/jars/", "ray/dashboard/client/", "ray/tests/", "ray/rllib/", "ray/tune/", "ray/serve/",
              "ray/train/", "ray/data/", "ray/llm/", "ray/workflow/")
RAY_MISSING_THERE = ("jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
# pycolmap-cuda12's NEEDED libraries that such a machine lacks, and what they need in turn (Debian package names)
X11_PACKAGES = ("libx11-6", "libxext6", "libsm6", "libice6", "libxcb1", "libxau6", "libxdmcp6", "libbsd0", "libmd0")


def installed_version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def download_wheels(requirements: list[str], folder: Path, python: str) -> list[Path]:
    """Binary wheels of exactly these requirements (no dependencies) for ``python`` on manylinux x86-64."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               python, "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)
    return sorted(folder.glob("*.whl"))


def wheel_as_xz(wheel: Path, target: Path, leave_out: tuple[str, ...] = ()) -> None:
    """The wheel's files (less the paths starting with ``leave_out``) as a .tar.xz to unpack into a site folder:
    xz packs the large shared libraries far tighter than the wheel's zip."""
    with zipfile.ZipFile(wheel) as archive, tarfile.open(target, "w:xz", preset=9) as packed:
        for member in archive.infolist():
            if member.is_dir() or member.filename.startswith(leave_out):
                continue
            data = archive.read(member)
            info = tarfile.TarInfo(member.filename)
            info.size = len(data)
            info.mode = (member.external_attr >> 16) & 0o777 or 0o644
            packed.addfile(info, io.BytesIO(data))


def debian_packages(names: tuple[str, ...], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", *names], check=True, cwd=folder, capture_output=True)


def copy_tree(source: Path, target: Path) -> None:
    if not source.is_dir():
        raise SystemExit(f"error: {source}: missing; set D2SFM_SHARED to a copy of ../shared")
    shutil.copytree(source, target, dirs_exist_ok=True)
    for path in (target, *target.rglob("*")):  # writable, whatever the source's modes: a repack removes them
        path.chmod(0o755 if path.is_dir() else 0o644)


def travelling_bytes(stage: Path) -> tuple[int, int]:
    """(bytes of the checkout that travels: tracked and untracked-not-ignored files, bytes of the stage folder)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    paths = [REPO / name.decode() for name in listed if name]
    checkout = sum(path.stat().st_size for path in paths if path.is_file())
    return checkout, sum(path.stat().st_size for path in stage.rglob("*") if path.is_file())


def stage_main(stage: Path, python: str) -> None:
    (stage / "weights").mkdir(parents=True, exist_ok=True)
    shutil.copy2(WEIGHTS, stage / "weights" / WEIGHTS.name)
    copy_tree(SACRE_COEUR, stage / "photos")
    copy_tree(SHARED / "reference" / "d2net_original_hed_vgg16", stage / "reference")
    with tempfile.TemporaryDirectory() as scratch:
        ray = download_wheels([f"ray=={installed_version('ray')}"], Path(scratch), python)[0]
        wheel_as_xz(ray, stage / "ray.tar.xz", RAY_UNUSED)
    download_wheels(list(RAY_MISSING_THERE), stage / "wheels", python)


def stage_colmap(stage: Path, python: str) -> None:
    copy_tree(SACRE_COEUR, stage / "photos")
    with tempfile.TemporaryDirectory() as scratch:
        wheel = download_wheels([f"pycolmap-cuda12=={installed_version('pycolmap')}"], Path(scratch), python)[0]
        wheel_as_xz(wheel, stage / "pycolmap.tar.xz")
    download_wheels(["nvidia-cuda-runtime-cu12"], stage / "wheels", python)
    debian_packages(X11_PACKAGES, stage / "debs")


def stage_handoff(stage: Path, from_main: Path) -> None:
    """The first call's report.json and handoff.tar into the second call's folder (from-main/)."""
    if not (stage / "pycolmap.tar.xz").is_file():
        raise SystemExit(f"error: {stage}: not packed yet; run python benchmarks/gpu_stage.py colmap first")
    (stage / "from-main").mkdir(exist_ok=True)
    for name in ("report.json", "handoff.tar"):
        if not (from_main / name).is_file():
            raise SystemExit(f"error: {from_main / name}: missing; pass the folder the first call's files came back "
                             "to (the run tool's files_at)")
        shutil.copy2(from_main / name, stage / "from-main" / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("call", choices=("main", "colmap", "handoff"),
                        help="which call's folder to pack; handoff: add the first call's files to colmap's")
    parser.add_argument("from_main", type=Path, nargs="?", default=None,
                        help="handoff: the folder of the first call's returned files (report.json, handoff.tar)")
    parser.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    parser.add_argument("--stage", type=Path, default=STAGE, help="default .gpu-stage/ in the checkout")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    args = parser.parse_args(argv)
    folder = args.stage / ("colmap" if args.call == "handoff" else args.call)
    if args.call == "handoff":
        if args.from_main is None:
            parser.error("handoff needs the folder of the first call's files: gpu_stage.py handoff DIR")
        stage_handoff(folder, args.from_main)
    else:
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        (stage_main if args.call == "main" else stage_colmap)(folder, args.python)
    checkout, staged = travelling_bytes(folder)
    total = (checkout + staged) / 2**20
    print(f"{folder}: {staged / 2**20:.1f} MiB staged + {checkout / 2**20:.1f} MiB of checkout = {total:.1f} MiB "
          f"(limit {args.limit_mib:g} MiB)")
    if total > args.limit_mib:
        print(f"error: {folder} would not travel: {total:.1f} MiB is over {args.limit_mib:g} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
