"""pycolmap's SIFT as a second extractor behind D2's interface: the whole pipeline runs on it, from the command
line and from Python, into the same files."""

import subprocess
import sys

import numpy as np

import d2sfm
from d2sfm.config import RunConfig
from d2sfm.features.extractor import ExtractionConfig, resize_for_network
from d2sfm.features.sift import SiftExtractor
from d2sfm.io.h5 import read_features, read_settings
from d2sfm.synthetic.scene import camera_poses, courtyard, render, render_scene


def test_keypoints_come_back_at_the_original_resolution():
    rotation, centre = camera_poses(2)[0]
    image = render(courtyard(0), rotation, centre, 640, 480, 512.0)
    extractor = SiftExtractor(ExtractionConfig(max_edge=320))
    resized = resize_for_network(image, 320, 2800)
    assert resized.shape[:2] == (240, 320)
    features = extractor.extract_batch([resized], [image.shape[:2]])[0]
    assert len(features.keypoints) > 50 and features.image_size == (640, 480)
    assert features.keypoints[:, 0].max() > 320 and features.keypoints[:, 1].max() > 240  # scaled back up
    assert (features.keypoints >= 0).all() and (features.keypoints[:, 0] <= 640).all()
    np.testing.assert_allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-5)


def test_reconstruct_runs_the_whole_pipeline_with_sift(tmp_path):
    scene = tmp_path / "scene"
    render_scene(scene, count=6, width=320, height=240, focal=256.0)
    run = subprocess.run([sys.executable, "-m", "d2sfm.reconstruct", str(scene), "--features-method", "sift",
                          "--no-refine", "--camera-mode", "single", "--quiet"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert read_settings(scene / "features.h5")["method"] == "sift"  # a D2 rerun would be refused, not mixed
    assert read_features(scene / "features.h5", "view_01.png").descriptors.shape[1] == 128
    stats = (scene / "stats.json").read_text()
    assert '"registered_images": 6' in stats or '"registered_images": 5' in stats, stats

    again = tmp_path / "python"  # the Python equivalent: the same features, image by image
    render_scene(again, count=6, width=320, height=240, focal=256.0)
    result = d2sfm.reconstruct(again, d2sfm.preset("sift", run=RunConfig(progress=False)))
    assert result.largest.num_reg_images() >= 5
    for name in ("view_01.png", "view_04.png"):
        ours, theirs = read_features(scene / "features.h5", name), read_features(again / "features.h5", name)
        np.testing.assert_allclose(ours.keypoints, theirs.keypoints, atol=1e-3)
