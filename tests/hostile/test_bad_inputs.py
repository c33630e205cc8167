"""Hostile inputs that used to end in a raw traceback (or a silent wrong result): each now ends in one line naming
the file or option, what is wrong and what to do, with exit status 2 (1 for an image that failed in extract), and
leaves every input file byte-identical.

a. --device meta / xpu / a GPU that is not there        e. d2sfm.synthetic at 60000 x 60000
b. --scales 16, and running out of memory on one image  f. d2sfm.refine on an empty or keypoint-less database
c. an hloc features file without descriptors, or NaN     g. a checkpoint that would run code (torch's warning)
d. pair lists, image lists and pose files not in UTF-8   h. --workers / --ray-workers without an upper bound
"""

from __future__ import annotations

import fractions
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pycolmap
import pytest
import torch

from tests.in_process import command_in_process

FAST = ("--conv", "winograd", "--quiet")


def command(module: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, check=False,
                          timeout=300, **kwargs)


def one_error_line(result: subprocess.CompletedProcess, *names: str, status: int = 2) -> str:
    """The single 'error: ...' line a refused command prints: the exit status, nothing else on stderr, no traceback
    and no terminal escape codes anywhere, and every one of ``names`` (the file, the option) in the line."""
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    assert "Traceback" not in output and "\x1b" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def help_text(module: str) -> str:
    """A command's --help with argparse's line wrapping undone."""
    return " ".join(command_in_process(module, "--help").stdout.split())


def snapshot(*paths: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in paths}


def assert_unchanged(before: dict[Path, bytes]) -> None:
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} changed"
        for suffix in ("-wal", "-shm", "-journal"):
            assert not Path(f"{path}{suffix}").exists(), f"{path}{suffix} was left beside it"


def write_image(path: Path, size: int, seed: int = 0) -> Path:
    """A small textured image (smoothed noise: D2-Net finds keypoints in it)."""
    rng = np.random.default_rng(seed)
    noise = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.GaussianBlur(noise, (5, 5), 2))
    return path


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    write_image(folder / "a.png", 64)
    return folder


# a ----------------------------------------------------------------------------------------------------------------

def test_a_device_must_be_one_this_machine_can_run_on(images, tmp_path):
    unusable = ["meta", "xpu", f"cuda:{torch.cuda.device_count() + 7}", "cpu:3"]
    if not torch.backends.mps.is_available():
        unusable.append("mps")
    for device in unusable:  # the first as a user runs it, the others through the same main in this process
        run = command if device == unusable[0] else command_in_process
        result = run("d2sfm.extract", images, "--device", device, "-o", tmp_path / "f.h5", *FAST)
        line = one_error_line(result, f"--device {device!r}")
        assert "--device cpu" in line or "cpu or cuda" in line, line
    assert not (tmp_path / "f.h5").exists()


# b ----------------------------------------------------------------------------------------------------------------

def test_b_scales_are_bounded(images, tmp_path):
    result = command_in_process("d2sfm.extract", images, "--scales", "0.5", "16", "-o", tmp_path / "f.h5", *FAST)
    line = one_error_line(result, "--scales", "16")
    assert "<= 4" in line
    assert not (tmp_path / "f.h5").exists()
    assert "at most 4" in help_text("d2sfm.extract")


OUT_OF_MEMORY_SCRIPT = textwrap.dedent("""
    import json, re, resource, sys
    from pathlib import Path
    import torch
    from d2sfm.features.extraction import extract_features, feature_settings
    from d2sfm.features.extractor import D2Extractor, ExtractionConfig

    root, weights, output, margin_mib = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    torch.set_grad_enabled(False)
    config = ExtractionConfig(scales=(4.0,), conv="winograd")
    extractor = D2Extractor(weights, config, "cpu")
    settings = feature_settings(config, weights)

    def run(names):
        return extract_features(root, names, output, extractor, settings, workers=0, progress=False)

    run(["small_1.png"])  # every lazy allocation of a run (threads, allocator arenas, the writer) made first
    in_use = int(re.search(r"VmSize:\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (in_use + margin_mib * 2**20, resource.RLIM_INFINITY))
    extracted, failures = run(["large.png", "small_2.png"])
    print(json.dumps({"extracted": extracted, "failures": failures}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_AS and /proc/self/status")
def test_b_running_out_of_memory_on_one_image_fails_that_image_only(tmp_path, weights_path):
    """A real limit on the address space, no mock: at scale 4 the 160-px image needs some 500 MiB more than the
    64-px ones, which need a few MiB. The large image is a failed image with one line of advice; the run goes on
    and extracts the next image."""
    folder = tmp_path / "images"
    write_image(folder / "small_1.png", 64, seed=1)
    write_image(folder / "large.png", 160, seed=2)
    write_image(folder / "small_2.png", 64, seed=3)
    output = tmp_path / "features.h5"
    threads = {name: "2" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # the same work on any machine
    result = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_SCRIPT, folder, weights_path, output, "200"],
                            capture_output=True, text=True, check=False, timeout=300, env={**os.environ, **threads})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["extracted"] == 1
    [(name, message)] = report["failures"]
    assert name == "large.png" and "\n" not in message
    assert message.startswith(f"{folder / 'large.png'}: ran out of memory"), message
    assert "network input 160x160" in message and "--scales 4" in message and "--max-edge" in message
    with h5py.File(output, "r") as handle:
        assert "small_1.png" in handle and "small_2.png" in handle and "large.png" not in handle


# c ----------------------------------------------------------------------------------------------------------------

def write_hloc_features(path: Path, damage: str) -> None:
    """hloc's layout (no attributes, descriptors D x N, pixel centres at 0) for a.png and b.png; b.png damaged."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as handle:
        for name in ("a.png", "b.png"):
            group = handle.create_group(name)
            keypoints = (rng.random((5, 2)) * 60).astype(np.float32)
            if name == "b.png" and damage == "nan":
                keypoints[2, 0], keypoints[3, 1] = np.nan, np.inf
            group["keypoints"] = keypoints
            if not (name == "b.png" and damage == "no descriptors"):
                group["descriptors"] = rng.random((16, 5)).astype(np.float32)
            group["image_size"] = np.array([64, 64])


@pytest.mark.parametrize("damage, words", [("no descriptors", "has no 'descriptors' dataset"),
                                           ("nan", "NaN or infinite value(s) in 'keypoints'")])
def test_c_hloc_features_are_checked_before_use(tmp_path, damage, words):
    features, pairs = tmp_path / "features.h5", tmp_path / "pairs.txt"
    write_hloc_features(features, damage)
    pairs.write_text("a.png b.png\n")
    before = snapshot(features, pairs)
    result = command("d2sfm.match", features, pairs, "-o", tmp_path / "matches.h5", "--device", "cpu", "--quiet")
    line = one_error_line(result, str(features), "'b.png'", words)
    if damage == "no descriptors":
        assert "hloc's extract_features or d2sfm.extract" in line
    assert_unchanged(before)


# d ----------------------------------------------------------------------------------------------------------------

LATIN1 = "caf\u00e9.png\n".encode("latin-1")  # 'café' saved by an editor in Latin-1: byte 0xe9 at offset 3


def test_d_text_inputs_that_are_not_utf8_are_named(images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"a.png\n" + LATIN1)
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(b"a.png " + LATIN1)
    poses = tmp_path / "gt.txt"
    poses.write_bytes(b"q0.jpg 1 0 0 0 0 0 0\n" + LATIN1)
    features = tmp_path / "features.h5"
    write_hloc_features(features, damage="none")
    before = snapshot(listing, pairs, poses, features)
    cases = [
        (("d2sfm.extract", listing, "-o", tmp_path / "f.h5", *FAST), listing, "image list", 9),
        (("d2sfm.extract", images, "--image-list", listing, "-o", tmp_path / "f.h5", *FAST), listing, "image list", 9),
        (("d2sfm.match", features, pairs, "-o", tmp_path / "m.h5", "--quiet"), pairs, "pair list", 9),
        (("d2sfm.evaluate", "poses", "--gt", poses, "--pred", poses), poses, "pose file", 24),
    ]
    for args, path, what, offset in cases:  # the first as a user runs it, the others in this process
        run = command if args == cases[0][0] else command_in_process
        line = one_error_line(run(*args), f"{path}: {what} is not UTF-8 text",
                              f"(byte 0xe9 at offset {offset})", "save it as UTF-8")
        assert line.endswith("save it as UTF-8"), line
    assert_unchanged(before)
    missing = command_in_process("d2sfm.evaluate", "poses", "--gt", tmp_path / "none.txt", "--pred", poses)
    one_error_line(missing, str(tmp_path / "none.txt"))


def test_d_read_text_file_reports_offsets_in_the_file(tmp_path):
    """The offset counts from the file's first byte, a byte-order mark included; line endings read as '\\n'."""
    from d2sfm.errors import D2sfmError
    from d2sfm.io.atomic import read_text_file

    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.png\r\nb.png\rc.png\n")
    assert read_text_file(path, "image list") == "a.png\nb.png\nc.png\n"
    path.write_bytes(b"\xef\xbb\xbf" + b"x" * 10000 + b"\xff")
    with pytest.raises(D2sfmError, match=r"list.txt: image list is not UTF-8 text \(byte 0xff at offset 10003\)"):
        read_text_file(path, "image list")
    with pytest.raises(D2sfmError, match="no such pair list"):
        read_text_file(tmp_path / "none.txt", "pair list")
    with pytest.raises(D2sfmError, match="is a folder, not a pose file"):
        read_text_file(tmp_path, "pose file")


# e ----------------------------------------------------------------------------------------------------------------

def test_e_synthetic_scene_size_is_bounded(tmp_path):
    scene = tmp_path / "scene"
    for option in ("--width", "--height"):
        result = (command if option == "--width" else command_in_process)("d2sfm.synthetic", scene, option, "60000")
        line = one_error_line(result, option, "60000")
        assert "<= 4096" in line
    one_error_line(command_in_process("d2sfm.synthetic", scene, "--views", "10000000"), "--views")
    assert not scene.exists()
    assert "at most 4096" in help_text("d2sfm.synthetic")


# f ----------------------------------------------------------------------------------------------------------------

def test_f_refine_refuses_a_database_with_nothing_to_refine(images, tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    schema_only = tmp_path / "schema.db"
    pycolmap.Database.open(schema_only).close()  # COLMAP's tables, no image
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    connection.close()
    before = snapshot(empty, schema_only, foreign)
    for database, words in [(empty, "is empty (0 bytes), not a COLMAP database"),
                            (schema_only, "has no image with keypoints"),
                            (foreign, "not a COLMAP database (no 'images' table)")]:
        run = command if database == empty else command_in_process
        result = run("d2sfm.refine", database, "--images", images, "--device", "cpu", "--quiet")
        line = one_error_line(result, f"{database}: {words}")
        assert "d2sfm.reconstruct" in line
    assert_unchanged(before)


# g ----------------------------------------------------------------------------------------------------------------

class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_g_a_checkpoint_that_would_run_code_is_refused_in_d2sfm_words_only(images, tmp_path):
    marker = tmp_path / "code-ran"
    zipped = tmp_path / "zipped.pth"  # torch.save's zip; torch's refusal carries terminal colour codes
    torch.save({"model": {}, "extra": fractions.Fraction(1, 3)}, zipped)
    raw = tmp_path / "raw.pth"  # a bare pickle of protocol 4: torch warns about the protocol
    with open(raw, "wb") as handle:
        pickle.dump({"model": {}, "extra": _RunsCode(marker)}, handle, protocol=4)
    legacy = tmp_path / "legacy.pth"  # protocol 2, as torch's legacy format: the unpickler reaches os.system
    with open(legacy, "wb") as handle:
        pickle.dump({"model": {}, "extra": _RunsCode(marker)}, handle, protocol=2)
    before = snapshot(zipped, raw, legacy)
    for weights, named in [(zipped, "fractions.Fraction"), (raw, "pickle instruction"), (legacy, "system")]:
        result = command("d2sfm.extract", images, "--weights", weights, "-o", tmp_path / "f.h5", *FAST)
        line = one_error_line(result, str(weights), "refused to load", named)
        assert "UserWarning" not in result.stderr and "weights_only" not in line, line
    assert not marker.exists()
    assert_unchanged(before)


# h ----------------------------------------------------------------------------------------------------------------

def test_h_worker_counts_are_bounded(images, tmp_path):
    for module, option, most in [("d2sfm.extract", "--workers", 64), ("d2sfm.train", "--workers", 64),
                                 ("d2sfm.extract", "--ray-workers", 1024)]:
        args = (images, "-o", tmp_path / "f.h5") if module == "d2sfm.extract" else ()
        result = (command if module == "d2sfm.train" else command_in_process)(module, *args, option, "100000")
        line = one_error_line(result, option, "100000")
        assert f"<= {most}" in line
    assert "at most 64" in help_text("d2sfm.extract")
    assert not (tmp_path / "f.h5").exists()
