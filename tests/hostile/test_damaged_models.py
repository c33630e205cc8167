"""Damaged COLMAP model files: one line naming the file, exit status 2, in seconds, files left as they were.

Before d2sfm.model_files, a truncated points3D.bin made pycolmap grow to 17 GB (deaf to SIGTERM) and random bytes
in cameras.bin gave a ValueError traceback.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pycolmap
import pytest

from d2sfm.errors import D2sfmError
from d2sfm.io.model_files import check_model_folder, read_model

POINTS, TRACK = 4, (1, 2, 3)  # image 4 sees no point: an empty 2D-point line in images.txt


def small_model() -> pycolmap.Reconstruction:
    """Two cameras (PINHOLE, OPENCV) on one rig with a posed second sensor, two frames of two images each, and
    four 3D points: every record kind and variable length of the binary format, with no photos needed."""
    model = pycolmap.Reconstruction()
    cameras = [pycolmap.Camera(model="PINHOLE", width=100, height=80, params=[50, 50, 50, 40], camera_id=1),
               pycolmap.Camera(model="OPENCV", width=100, height=80, params=[50, 50, 50, 40, .1, .2, .3, .4],
                               camera_id=2)]
    rig = pycolmap.Rig(rig_id=1)
    rig.add_ref_sensor(cameras[0].sensor_id)
    rig.add_sensor(cameras[1].sensor_id, pycolmap.Rigid3d(pycolmap.Rotation3d(np.eye(3)), np.array([0.5, 0, 0])))
    for camera in cameras:
        model.add_camera(camera)
    model.add_rig(rig)
    image_id = 0
    for frame_id in (1, 2):
        frame = pycolmap.Frame(frame_id=frame_id, rig_id=1, rig_from_world=pycolmap.Rigid3d(
            pycolmap.Rotation3d(np.eye(3)), np.array([frame_id, 0.0, 0.0])))
        images = []
        for camera in cameras:
            image_id += 1
            points = [] if image_id == 4 else [pycolmap.Point2D(np.array([10.0 * j + 5, 20.0 + j]))
                                               for j in range(POINTS)]
            images.append(pycolmap.Image(name=f"view_{image_id}.png", camera_id=camera.camera_id,
                                         image_id=image_id, frame_id=frame_id, points2D=points))
            frame.add_data_id(images[-1].data_id)
        model.add_frame(frame)
        for image in images:
            model.add_image(image)
    for j in range(POINTS):
        model.add_point3D(np.array([j, 1.0, 5.0]),
                          pycolmap.Track([pycolmap.TrackElement(image_id, j) for image_id in TRACK]))
    return model


def essence(model: pycolmap.Reconstruction) -> dict:
    """What a read-back must keep: intrinsics, rigs, names, poses, 2D points, 3D points and tracks."""
    return {
        "cameras": {i: (c.model_name, c.width, c.height, list(c.params)) for i, c in model.cameras.items()},
        "rigs": {i: r.num_sensors() for i, r in model.rigs.items()},
        "images": {i: (im.name, im.camera_id, im.frame_id, im.cam_from_world().matrix().round(12).tolist(),
                       [p.xy.tolist() for p in im.points2D]) for i, im in model.images.items()},
        "points": {i: (p.xyz.tolist(), sorted((e.image_id, e.point2D_idx) for e in p.track.elements))
                   for i, p in model.points3D.items()},
    }


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "sparse" / "0"
    folder.mkdir(parents=True)
    small_model().write_binary(folder)
    assert {p.name for p in folder.iterdir()} == {"cameras.bin", "images.bin", "points3D.bin", "rigs.bin",
                                                  "frames.bin"}
    return folder


def test_valid_binary_and_text_models_pass_and_read_back_equal(model_dir):
    expected = essence(small_model())
    check_model_folder(model_dir)
    assert essence(read_model(model_dir)) == expected
    text = model_dir.with_name("text")
    text.mkdir()
    small_model().write_text(text)
    assert "\n\n" in (text / "images.txt").read_text()  # the empty 2D-point line of image 4
    check_model_folder(text)
    assert essence(read_model(text)) == expected
    for name in ("rigs.bin", "frames.bin"):  # COLMAP 3.x models have neither: pycolmap makes one rig per camera
        (model_dir / name).unlink()
    check_model_folder(model_dir)


def cut(at: int | Callable[[int], int]) -> Callable[[bytes], bytes]:
    return lambda data: data[: at(len(data)) if callable(at) else at]


DAMAGE = {  # file, how it is damaged
    "points3D cut inside the header": ("points3D.bin", cut(5)),
    "points3D cut inside a point": ("points3D.bin", cut(8 + 30)),
    "points3D cut inside the last track": ("points3D.bin", cut(lambda size: size - 3)),
    "cameras random bytes": ("cameras.bin", lambda data: np.random.default_rng(0).bytes(len(data))),
    "images 0 bytes": ("images.bin", cut(0)),
    "points3D trailing garbage": ("points3D.bin", lambda data: data + b"\x00garbage"),
}


def damage(folder: Path, name: str, change: Callable[[bytes], bytes]) -> dict[str, bytes]:
    """Damage one file; returns every file's bytes, to compare with after the command."""
    (folder / name).write_bytes(change((folder / name).read_bytes()))
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_file_is_one_error_line_naming_it(model_dir, case):
    name, change = DAMAGE[case]
    before = damage(model_dir, name, change)
    with pytest.raises(D2sfmError, match="damaged COLMAP model file") as error:
        check_model_folder(model_dir)
    assert str(model_dir / name) in str(error.value)

    output = model_dir.parent / "out.png"
    run = subprocess.run([sys.executable, "-m", "d2sfm.viz", "model", str(model_dir), "-o", str(output)],
                         capture_output=True, text=True, timeout=30)  # was: 17 GB and no end
    assert run.returncode == 2, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and str(model_dir / name) in lines[0], run.stderr
    assert "Traceback" not in run.stderr and not output.exists()
    assert {path.name: path.read_bytes() for path in model_dir.iterdir()} == before


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin", "rigs.bin", "frames.bin"])
def test_every_truncation_and_extra_byte_is_caught(model_dir, name):
    """Each binary file cut at every byte, and with one byte too many: never handed to pycolmap."""
    data = (model_dir / name).read_bytes()
    for size in [*range(len(data)), -1]:
        (model_dir / name).write_bytes(data[:size] if size >= 0 else data + b"\x01")
        with pytest.raises(D2sfmError, match=re.escape(str(model_dir / name))):
            check_model_folder(model_dir)


def test_absurd_counts_fail_at_once(model_dir):
    """The header and a track length that promise far more than the file holds."""
    data = (model_dir / "points3D.bin").read_bytes()
    (model_dir / "points3D.bin").write_bytes(struct.pack("<Q", 2**62) + data[8:])
    with pytest.raises(D2sfmError, match="header counts 4611686018427387904 3D points"):
        check_model_folder(model_dir)
    track_length = 8 + 43
    (model_dir / "points3D.bin").write_bytes(data[:track_length] + struct.pack("<Q", 2**40) + data[track_length + 8:])
    with pytest.raises(D2sfmError, match="3D point 1 of 4 runs past the end"):
        check_model_folder(model_dir)
    (model_dir / "points3D.bin").write_bytes(data)
    cameras = bytearray((model_dir / "cameras.bin").read_bytes())
    cameras[12:16] = struct.pack("<i", 99)
    (model_dir / "cameras.bin").write_bytes(bytes(cameras))
    with pytest.raises(D2sfmError, match="unknown camera model id 99"):
        check_model_folder(model_dir)


def test_what_pycolmap_still_refuses_names_the_folder(model_dir):
    """Whole files that disagree with each other (a track naming image 9 of 4) pass the walk; pycolmap's own
    complaint becomes a D2sfmError naming the folder."""
    data = bytearray((model_dir / "points3D.bin").read_bytes())
    data[8 + 51: 8 + 55] = struct.pack("<I", 9)
    (model_dir / "points3D.bin").write_bytes(bytes(data))
    check_model_folder(model_dir)
    words = rf"^{re.escape(str(model_dir))}: damaged COLMAP model file \(pycolmap cannot read it: .*9"
    with pytest.raises(D2sfmError, match=words):
        read_model(model_dir)


def test_damaged_text_models(model_dir):
    text = model_dir.with_name("text")
    text.mkdir()
    small_model().write_text(text)
    original = {path.name: path.read_bytes() for path in text.iterdir()}

    def fails(name: str, data: bytes, words: str) -> None:
        (text / name).write_bytes(data)
        with pytest.raises(D2sfmError, match=words) as error:
            read_model(text)
        assert str(text / name) in str(error.value)
        (text / name).write_bytes(original[name])

    fails("cameras.txt", np.random.default_rng(1).bytes(300), "not UTF-8")
    fails("points3D.txt", original["points3D.txt"][:-3], "cut short")
    lines = original["points3D.txt"].splitlines(keepends=True)
    fails("points3D.txt", b"".join(lines[:-1]), "header counts 4 points but the file holds 3 data lines")
    shutil.rmtree(text)
    with pytest.raises(D2sfmError, match="not a COLMAP model"):
        read_model(text)
