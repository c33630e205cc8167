import torch
import torch.nn.functional as F

from d2sfm.match import mutual_nearest_neighbours


def test_chunked_mutual_nearest_neighbours_equal_the_full_matrix():
    generator = torch.Generator().manual_seed(0)
    d0 = F.normalize(torch.randn(300, 16, generator=generator), dim=1)
    d1 = F.normalize(torch.cat([d0[:120] + 0.05 * torch.randn(120, 16, generator=generator),
                                torch.randn(80, 16, generator=generator)]), dim=1)
    similarity = d0 @ d1.T
    forward, backward = similarity.argmax(1), similarity.argmax(0)
    expected = {(i, int(forward[i])) for i in range(300) if backward[forward[i]] == i}
    for chunk in (7, 64, 4096):
        got = {tuple(pair) for pair in mutual_nearest_neighbours(d0, d1, chunk_size=chunk).tolist()}
        assert got == expected
    assert {(i, i) for i in range(120)} <= expected  # the perturbed copies find each other


def test_empty_inputs():
    assert mutual_nearest_neighbours(torch.zeros(0, 8), torch.randn(5, 8)).shape == (0, 2)
