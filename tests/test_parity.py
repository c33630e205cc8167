"""Our extractor against the outputs of the original D2-Net code with the same weights (../shared/reference)."""

import numpy as np
import pytest
from conftest import REFERENCE_IMAGES
from scipy.spatial import cKDTree

from d2sfm.extractor import D2Extractor, ExtractionConfig
from d2sfm.images import read_image_bgr
from d2sfm.pyramid import MULTI_SCALE, SINGLE_SCALE

pytestmark = pytest.mark.integration


def compare_to_reference(features, reference):
    """Match each of our keypoints to the nearest reference one (COLMAP convention = reference + 0.5)."""
    reference_xy = reference["keypoints_ijs"][:, [1, 0]].astype(np.float64) + 0.5
    distance, nearest = cKDTree(reference_xy).query(features.keypoints.astype(np.float64))
    back_distance, _ = cKDTree(features.keypoints.astype(np.float64)).query(reference_xy)
    scores = reference["scores"][nearest]
    cosine = np.sum(features.descriptors * reference["descriptors"][nearest].astype(np.float32), axis=1)
    return {
        "ours": len(features.keypoints), "reference": len(reference_xy),
        "ours_unmatched": int(np.sum(distance > 1e-3)), "reference_unmatched": int(np.sum(back_distance > 1e-3)),
        "matched": distance <= 1e-3, "distance": distance,
        "score_error": np.abs(features.scores - scores) / np.abs(scores),
        "cosine": cosine, "same_scale": features.scales == reference["keypoints_ijs"][nearest, 2],
    }


@pytest.fixture(scope="module")
def extractors(weights_path):
    return {
        (conv, scales): D2Extractor(weights_path, ExtractionConfig(scales=scales, conv=conv))
        for conv in ("exact", "winograd") for scales in (SINGLE_SCALE, MULTI_SCALE)
    }


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
@pytest.mark.parametrize("scales,suffix", [(SINGLE_SCALE, "ss"), (MULTI_SCALE, "ms")])
def test_exact_extraction_equals_the_original(extractors, reference_dir, name, scales, suffix):
    reference = np.load(reference_dir / f"{name}.{suffix}.npz")
    features = extractors[("exact", scales)].extract(read_image_bgr(reference_dir / f"{name}.png"))
    result = compare_to_reference(features, reference)
    assert result["ours"] == result["reference"]
    assert result["ours_unmatched"] == 0 and result["reference_unmatched"] == 0
    assert result["distance"].max() <= 1e-3
    assert result["score_error"].max() <= 1e-4
    assert result["cosine"].min() >= 0.999
    assert result["same_scale"].all()


@pytest.mark.parametrize("name", REFERENCE_IMAGES)
@pytest.mark.parametrize("scales,suffix", [(SINGLE_SCALE, "ss"), (MULTI_SCALE, "ms")])
def test_winograd_extraction_is_nearly_the_original(extractors, reference_dir, name, scales, suffix):
    """Winograd moves only decisions that sit on a threshold: >= 99% of keypoints identical."""
    reference = np.load(reference_dir / f"{name}.{suffix}.npz")
    features = extractors[("winograd", scales)].extract(read_image_bgr(reference_dir / f"{name}.png"))
    result = compare_to_reference(features, reference)
    assert result["ours_unmatched"] <= 0.01 * result["ours"]
    assert result["reference_unmatched"] <= 0.01 * result["reference"]
    matched = result["matched"]
    assert result["score_error"][matched].max() <= 1e-4
    assert result["cosine"][matched].min() >= 0.999


def test_geometric_centres_shift_each_level_by_its_pooling_offset(weights_path, reference_dir):
    """The only difference of --geometric-centres: +2 px at every level's resolution, i.e. 2 x scale here."""
    image = read_image_bgr(reference_dir / f"{REFERENCE_IMAGES[0]}.png")
    results = [D2Extractor(weights_path, ExtractionConfig(scales=MULTI_SCALE, max_edge=320, geometric_centres=g))
               .extract(image) for g in (False, True)]
    original, geometric = results
    assert np.array_equal(original.scales, geometric.scales) and len(original.scales) > 100
    assert set(np.unique(original.scales).round(3)) == {1.0, 2.0, 4.0}  # 0.5x resize: pyramid scales x2
    assert np.allclose(geometric.keypoints - original.keypoints, 2.0 * original.scales[:, None], atol=1e-3)
    assert np.array_equal(geometric.descriptors, original.descriptors)
