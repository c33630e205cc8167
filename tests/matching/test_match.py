import pytest
import torch
import torch.nn.functional as F

from d2sfm.matching.mnn import GPU_SIMILARITY_BYTES, mutual_nearest_neighbours, similarity_chunk_rows

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU"))]


def test_one_product_on_a_gpu_when_it_fits_and_bounded_chunks_when_not():
    cuda = torch.device("cuda")  # a device name only: nothing runs on it
    assert similarity_chunk_rows(8000, 8000, cuda) == 8000
    rows = similarity_chunk_rows(20000, 20000, cuda)
    assert rows < 20000 and rows * 20000 * 4 <= GPU_SIMILARITY_BYTES
    assert similarity_chunk_rows(20000, 20000, torch.device("cpu")) == 4096


@pytest.mark.parametrize("device", DEVICES)
def test_chunked_mutual_nearest_neighbours_equal_the_full_matrix(device):
    generator = torch.Generator().manual_seed(0)
    d0 = F.normalize(torch.randn(300, 16, generator=generator), dim=1)
    d1 = F.normalize(torch.cat([d0[:120] + 0.05 * torch.randn(120, 16, generator=generator),
                                torch.randn(80, 16, generator=generator)]), dim=1)
    similarity = d0 @ d1.T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    expected = {(i, int(forward[i])) for i in range(300) if backward[forward[i]] == i}
    for chunk in (7, 64, None):
        got = {tuple(pair) for pair in mutual_nearest_neighbours(d0.to(device), d1.to(device),
                                                                 chunk_size=chunk)[0].tolist()}
        assert got == expected
    assert {(i, i) for i in range(120)} <= expected  # the perturbed copies find each other


def test_empty_inputs():
    assert mutual_nearest_neighbours(torch.zeros(0, 8), torch.randn(5, 8))[0].shape == (0, 2)


def test_similarity_and_ratio_filters():
    generator = torch.Generator().manual_seed(1)
    d0 = F.normalize(torch.randn(200, 32, generator=generator), dim=1)
    d1 = F.normalize(d0 + 0.3 * torch.randn(200, 32, generator=generator), dim=1)
    matches, scores = mutual_nearest_neighbours(d0, d1, chunk_size=50)
    assert torch.allclose(scores, (d0[matches[:, 0]] * d1[matches[:, 1]]).sum(1))
    strict, strict_scores = mutual_nearest_neighbours(d0, d1, min_similarity=0.9)
    assert (strict_scores >= 0.9).all() and set(map(tuple, strict.tolist())) <= set(map(tuple, matches.tolist()))
    ratio, _ = mutual_nearest_neighbours(d0, d1, ratio=0.8, chunk_size=64)
    similarity = d0 @ d1.T
    top2 = similarity.topk(2, dim=1).values
    distances = (2 - 2 * top2).clamp(min=0).sqrt()
    for i, j in ratio.tolist():
        assert distances[i, 0] < 0.8 * distances[i, 1]
    assert 0 < len(ratio) < len(matches)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_resolve_to_the_first_index_like_a_dense_argmax(device):
    generator = torch.Generator().manual_seed(2)
    base = F.normalize(torch.randn(50, 8, generator=generator), dim=1)
    d0 = torch.cat([base, base[:10]])  # duplicated descriptors, as D2 yields for channel ties
    d1 = torch.cat([base[5:], base[5:15]])
    similarity = d0 @ d1.T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    expected = {(i, int(forward[i])) for i in range(len(d0)) if backward[forward[i]] == i}
    for chunk in (3, 16, None):
        got = {tuple(p) for p in mutual_nearest_neighbours(d0.to(device), d1.to(device), chunk_size=chunk)[0].tolist()}
        assert got == expected
