import numpy as np
import pytest

import d2sfm.matching.pairs as pairs_module
from d2sfm.errors import D2sfmError
from d2sfm.matching.pairs import (
    exhaustive_pairs,
    read_pairs,
    retrieval_pairs,
    sequential_pairs,
    unique_pairs,
    write_pairs,
)


def test_exhaustive_and_sequential():
    names = [f"{i}.jpg" for i in range(6)]
    assert len(exhaustive_pairs(names)) == 15
    sequential = sequential_pairs(list(reversed(names)), overlap=2)
    assert sequential[:3] == [("0.jpg", "1.jpg"), ("0.jpg", "2.jpg"), ("1.jpg", "2.jpg")] and len(sequential) == 9


def test_unique_pairs_drops_repeats_in_either_order():
    assert unique_pairs([("a", "b"), ("b", "a"), ("a", "a"), ("a", "c")]) == [("a", "b"), ("a", "c")]


def test_retrieval_picks_the_most_similar_images():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    descriptors = np.concatenate([centres[i] + 0.05 * rng.normal(size=(4, 16)) for i in range(3)])
    names = [f"group{i // 4}_{i % 4}" for i in range(12)]
    pairs = retrieval_pairs(names, descriptors, top_k=3)
    assert all(a.split("_")[0] == b.split("_")[0] for a, b in pairs)
    assert len(pairs) == 3 * 6  # each group of 4 becomes a clique of 6 pairs


def test_retrieval_in_row_chunks_gives_the_same_pairs(monkeypatch):
    rng = np.random.default_rng(1)
    descriptors = rng.normal(size=(23, 8))
    names = [f"image{i:02d}" for i in range(23)]
    whole = retrieval_pairs(names, descriptors, top_k=4)
    monkeypatch.setattr(pairs_module, "RETRIEVAL_ROWS", 5)
    assert retrieval_pairs(names, descriptors, top_k=4) == whole


def test_pair_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "pairs.txt"
    write_pairs(path, [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg")])
    assert read_pairs(path, known_names=["a.jpg", "b.jpg", "c.jpg"]) == [("a.jpg", "b.jpg"), ("b.jpg", "c.jpg")]
    with pytest.raises(D2sfmError, match=r"pairs.txt:2: image 'c.jpg' is not among the images"):
        read_pairs(path, known_names=["a.jpg", "b.jpg"])
    path.write_text("a.jpg\n")
    with pytest.raises(D2sfmError, match=r"pairs.txt:1: expected 'name0 name1'"):
        read_pairs(path)


@pytest.mark.integration
def test_real_benchmark_pair_lists_parse(shared):
    folder = shared / "data"
    aachen = read_pairs(folder / "aachen_local_features" / "image_pairs_to_match.txt")
    assert len(aachen) > 10000 and all(a != b for a, b in aachen[:1000])
    assert any(name.startswith("query/night/") for pair in aachen[:200000] for name in pair)
    netvlad = read_pairs(folder / "retrieval_pairs" / "aachen" / "pairs-query-netvlad50.txt")
    assert netvlad[0][0].startswith("query/") and netvlad[0][1].startswith("db/")
    inloc = read_pairs(folder / "retrieval_pairs" / "inloc" / "pairs-query-netvlad40.txt")
    assert inloc[0][0].startswith("query/iphone7/") and inloc[0][1].startswith("database/cutouts/")
