"""The sparse detector against a dense formulation of the paper's rules (every channel, every cell)."""

import pytest
import torch
import torch.nn.functional as F

from d2sfm.features.detect import detect_level, sample_descriptors


def _filter(maps, kernel):
    b, c, h, w = maps.shape
    weight = torch.tensor(kernel, dtype=maps.dtype).view(1, 1, 3, 3)
    return F.conv2d(maps.reshape(b * c, 1, h, w), weight, padding=1).view(b, c, h, w)


def dense_detections(maps, edge_threshold=5.0):
    """(c, i, j) -> (refined i, refined j) for every detection, computed densely."""
    dii = _filter(maps, [[0, 1, 0], [0, -2, 0], [0, 1, 0]])
    djj = _filter(maps, [[0, 0, 0], [1, -2, 1], [0, 0, 0]])
    dij = _filter(maps, [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]])
    di = _filter(maps, [[0, -0.5, 0], [0, 0, 0], [0, 0.5, 0]])
    dj = _filter(maps, [[0, 0, 0], [-0.5, 0, 0.5], [0, 0, 0]])
    det = dii * djj - dij * dij
    trace = dii + djj
    detected = (
        (maps == maps.max(dim=1, keepdim=True).values)
        & (maps == F.max_pool2d(maps, 3, stride=1, padding=1))
        & (trace * trace / det <= (edge_threshold + 1) ** 2 / edge_threshold) & (det > 0)
    )
    step_i = -(djj / det * di - dij / det * dj)
    step_j = -(-dij / det * di + dii / det * dj)
    result = {}
    for b, c, i, j in detected.nonzero().tolist():
        si, sj = step_i[b, c, i, j].item(), step_j[b, c, i, j].item()
        if abs(si) < 0.5 and abs(sj) < 0.5:
            result[(b, c, i, j)] = (i + si, j + sj)
    return result, detected.any(dim=1, keepdim=True)


def _smooth_maps(seed, batch=2, channels=8, height=14, width=17):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, channels, height + 4, width + 4, generator=generator)
    smooth = F.avg_pool2d(noise, 3, stride=1)[:, :, 1:-1, 1:-1]
    maps = F.relu(smooth * 3)
    maps[:, :, :3, :4] = 0  # a dead corner, as ReLU leaves in flat regions
    maps[0, 1, 5:9, 5:9] = maps[0, 0, 5:9, 5:9]  # exact ties between channels
    return maps


@pytest.mark.parametrize("seed", range(5))
def test_sparse_detection_equals_the_dense_rules(seed):
    maps = _smooth_maps(seed)
    expected, detected_cells = dense_detections(maps)
    found = detect_level(maps)
    assert torch.equal(found.detected_cells, detected_cells)
    got = {tuple([b] + cell): tuple(pos) for b, cell, pos in
           zip(found.batch_index.tolist(), found.cell.tolist(), found.position.tolist())}
    # points whose bilinear neighbours leave the map are dropped, as in the original
    h, w = maps.shape[2:]
    inside = {k: v for k, v in expected.items() if 0 <= v[0] <= h - 1 and 0 <= v[1] <= w - 1}
    assert got.keys() == inside.keys() and len(got) > 3
    for key, position in got.items():
        assert position == pytest.approx(inside[key], abs=1e-5)
        assert found.score[list(got).index(key)] == maps[key]


def test_banned_cells_are_not_detected():
    maps = _smooth_maps(0)
    everything = detect_level(maps)
    banned = everything.detected_cells.clone()
    banned[1] = False
    rerun = detect_level(maps, banned)
    assert (rerun.batch_index == 1).all()
    assert rerun.detected_cells[0].sum() == 0


def test_descriptors_are_bilinear_and_points_outside_are_dropped():
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    positions = torch.tensor([[0.5, 1.25], [2.0, 3.0], [2.2, 1.0], [-0.1, 0.0]])
    descriptors, kept = sample_descriptors(features, torch.zeros(4, dtype=torch.long), positions)
    assert kept.tolist() == [True, True, False, False]
    # channel 0 is 4*i + j, channel 1 is 12 + 4*i + j: bilinear interpolation reproduces them exactly
    assert descriptors[:, 0].tolist() == pytest.approx([4 * 0.5 + 1.25, 4 * 2 + 3])
    assert descriptors[:, 1].tolist() == pytest.approx([12 + 4 * 0.5 + 1.25, 12 + 4 * 2 + 3])


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bf16_and_channels_last_maps_are_read_as_their_float32_values(layout):
    """GpuTuning's working-precision maps and channels-last maps: detection on them is detection on the float32
    contiguous maps holding the same values (derivatives, scores and descriptors are computed in float32)."""
    maps = _smooth_maps(3).bfloat16().contiguous(memory_format=layout)
    reference = detect_level(maps.float().contiguous())
    found = detect_level(maps)
    assert found.score.dtype == found.descriptor.dtype == found.position.dtype == torch.float32
    for name in ("batch_index", "cell", "position", "score", "descriptor", "detected_cells"):
        assert torch.equal(getattr(found, name), getattr(reference, name)), name
    assert len(found.score) > 3
