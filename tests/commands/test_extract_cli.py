"""``python -m d2sfm.extract`` end to end on real photos (downscaled to keep CI fast)."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from d2sfm.io.h5 import SCRATCH_GROUP, list_entries, read_features, read_settings
from tests.in_process import command_in_process

pytestmark = pytest.mark.integration
FAST = ["--max-edge", "256", "--quiet"]


def run_extract(*args, weights, fresh=False):
    """The command's main in this process (2-4 s of interpreter start and imports less per run), or with ``fresh``
    in a new ``python -m`` process as a user runs it: each test's first run and first refusal."""
    if not fresh:
        return command_in_process("d2sfm.extract", *args, "--weights", weights)
    return subprocess.run([sys.executable, "-m", "d2sfm.extract", *map(str, args), "--weights", str(weights)],
                          capture_output=True, text=True)


@pytest.fixture
def image_folder(tmp_path, sacre_coeur_images):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    names = sorted(p.name for p in sacre_coeur_images.glob("*.jpg"))[:3]
    shutil.copy(sacre_coeur_images / names[0], folder / names[0])
    shutil.copy(sacre_coeur_images / names[1], folder / "nested" / names[1])
    photo = cv2.imread(str(sacre_coeur_images / names[2]))
    gray = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(folder / "gray.png"), gray)
    cv2.imwrite(str(folder / "deep.png"), gray.astype(np.uint16) * 257)
    cv2.imwrite(str(folder / "alpha.png"), np.dstack([photo, np.full_like(gray, 128)]))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    return folder


def test_extracts_resumes_and_reports_bad_images(tmp_path, image_folder, weights_path):
    output = tmp_path / "features.h5"
    first = run_extract(image_folder, "-o", output, *FAST, "--device", "cpu", "--timings", tmp_path / "timings.json",
                        weights=weights_path, fresh=True)
    assert first.returncode == 1, first.stderr
    timings = json.loads((tmp_path / "timings.json").read_text())
    seconds = timings["seconds"]
    assert timings["images"] == 5 and timings["peak_rss_mb"] > 100 and timings["peak_gpu_memory_mb"] is None
    assert 0 < seconds["network"] <= seconds["network and detection"] <= seconds["extraction loop"]
    assert seconds["detection"] == pytest.approx(seconds["network and detection"] - seconds["network"], abs=2e-3)
    assert seconds["writing"] > 0 and seconds["decoding (loader worker time)"] > 0
    assert f"timings ({tmp_path / 'timings.json'}): " in first.stdout
    assert "broken.jpg: cannot be decoded" in first.stderr and "Traceback" not in first.stderr
    assert "5 images extracted, 0 already done, 1 failed" in first.stdout
    names = set(list_entries(output))
    assert names == {n for n in ("alpha.png", "deep.png", "gray.png") } | {
        p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.jpg") if p.name != "broken.jpg"}
    for name in names:
        features = read_features(output, name)
        width, height = features.image_size
        assert (width, height) == cv2.imread(str(image_folder / name), cv2.IMREAD_UNCHANGED).shape[1::-1]
        assert len(features.keypoints) > 50
        assert (features.keypoints >= 0).all() and (features.keypoints[:, 0] <= width).all()
        assert (features.keypoints[:, 1] <= height).all()
        assert features.descriptors.dtype == np.float16 and features.descriptors.shape[1] == 512
        assert np.allclose(np.linalg.norm(features.descriptors.astype(np.float32), axis=1), 1, atol=2e-3)
    # a 16-bit copy of an 8-bit image gives the same features as the 8-bit one
    assert np.array_equal(read_features(output, "deep.png").keypoints, read_features(output, "gray.png").keypoints)

    (image_folder / "broken.jpg").unlink()
    with h5py.File(output, "a") as handle:  # what an interrupted write leaves behind
        handle.create_group(f"{SCRATCH_GROUP}/leftover").create_dataset("keypoints", data=np.zeros((1, 2)))
    second = run_extract(image_folder, "-o", output, *FAST, weights=weights_path)
    assert second.returncode == 0, second.stderr
    assert "0 images extracted, 5 already done, 0 failed" in second.stdout
    with h5py.File(output, "r") as handle:
        assert SCRATCH_GROUP not in handle


def test_max_keypoints_keeps_the_best_and_settings_cannot_mix(tmp_path, image_folder, weights_path):
    (image_folder / "broken.jpg").unlink()
    full, capped = tmp_path / "full.h5", tmp_path / "capped.h5"
    assert run_extract(image_folder, "-o", full, *FAST, weights=weights_path, fresh=True).returncode == 0
    capped_run = run_extract(image_folder, "-o", capped, "--max-keypoints", "100", *FAST, weights=weights_path)
    assert capped_run.returncode == 0
    name = "gray.png"
    all_scores = np.sort(read_features(full, name).scores)[::-1]
    kept = read_features(capped, name)
    assert len(kept.keypoints) == 100
    assert np.allclose(np.sort(kept.scores)[::-1], all_scores[:100])
    assert read_settings(capped)["max_keypoints"] == 100

    mixed = run_extract(image_folder, "-o", capped, "--multiscale", *FAST, weights=weights_path)
    assert mixed.returncode == 2
    assert "other settings (" in mixed.stderr and "--overwrite" in mixed.stderr
    assert "max_keypoints: 100 there, 0 now" in mixed.stderr
    assert "scales: [1.0] there, [0.5, 1.0, 2.0] now" in mixed.stderr


def test_interrupted_run_resumes_without_redoing_work(tmp_path, sacre_coeur_images, weights_path):
    output = tmp_path / "features.h5"
    process = subprocess.Popen(
        [sys.executable, "-m", "d2sfm.extract", str(sacre_coeur_images), "-o", str(output), "--max-edge", "320",
         "--workers", "0", "--quiet", "--weights", str(weights_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell without job control starts background jobs with SIGINT ignored, and the child would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    done_before = []
    while time.time() < deadline and process.poll() is None:
        try:
            done_before = list_entries(output)
        except Exception:  # the writer holds the file for a moment
            done_before = []
        if len(done_before) >= 2:
            process.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr
    interrupted = list_entries(output)
    assert 2 <= len(interrupted) < 10
    resumed = run_extract(sacre_coeur_images, "-o", output, "--max-edge", "320", "--quiet", weights=weights_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{10 - len(interrupted)} images extracted, {len(interrupted)} already done" in resumed.stdout
    assert len(list_entries(output)) == 10


def test_help_and_bad_folder(tmp_path, weights_path):
    help_run = command_in_process("d2sfm.extract", "--help")
    assert help_run.returncode == 0 and "--max-keypoints" in help_run.stdout and "--multiscale" in help_run.stdout
    missing = run_extract(tmp_path / "nowhere", weights=weights_path, fresh=True)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "nowhere: no such folder or image list" in missing.stderr
    (tmp_path / "empty").mkdir()
    empty = command_in_process("d2sfm.extract", tmp_path / "empty", "--weights", weights_path)  # same main, no imports
    assert empty.returncode == 2 and "no images found" in empty.stderr
    (tmp_path / "one").mkdir()
    cv2.imwrite(str(tmp_path / "one" / "a.png"), np.zeros((32, 32, 3), np.uint8))
    no_memory = command_in_process("d2sfm.extract", tmp_path / "one", "--gpu-memory", "0", "--weights", weights_path)
    assert no_memory.returncode == 2 and no_memory.stderr.count("\n") == 1
    assert "argument --gpu-memory:" in no_memory.stderr


def _child_pids(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):  # the thread (or the process) ended since the listing
            continue
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux's")
def test_killed_run_leaves_no_loader_behind_and_resumes(tmp_path, sacre_coeur_images, weights_path):
    """SIGKILL (what the out-of-memory killer sends) must not leave the image loader hanging on to the output pipe,
    and the rerun extracts exactly the images the file lacks."""
    output = tmp_path / "features.h5"
    command = [sys.executable, "-m", "d2sfm.extract", str(sacre_coeur_images), "-o", str(output), "--max-edge",
               "320", "--workers", "1", "--quiet", "--weights", str(weights_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, loaders = time.time() + 120, []
    while time.time() < deadline and process.poll() is None:
        loaders = loaders or _child_pids(process.pid)
        try:
            if list_entries(output):
                break
        except Exception:  # the writer holds the file for a moment
            pass
        time.sleep(0.05)
    assert loaders, "the extraction started no loader process"
    process.kill()
    process.communicate(timeout=30)  # returns only once every holder of the output pipe is gone
    time.sleep(0.5)
    assert not [pid for pid in loaders if _alive(pid)]
    kept = len(list_entries(output))
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{10 - kept} images extracted, {kept} already done" in resumed.stdout
