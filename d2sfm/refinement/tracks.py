"""Tracks: the keypoints that geometrically verified matches tie together, across all images.

Keypoint refinement moves the keypoints of one track together (aligned to one anchor, or adjusted jointly); a
track is a connected component of the graph whose nodes are keypoints and whose edges are verified matches.
Built with one sparse connected-components call, so a 10,000-image database takes seconds, not a Python loop per
match.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


@dataclass
class Tracks:
    """Every keypoint that has a verified match, numbered 0..K-1 ("nodes"), and the matches between them.

    ``image_ids[k]`` and ``keypoint_ids[k]`` say where node ``k`` comes from; ``track_ids[k]`` is its track (0..T-1);
    ``edges`` (E, 2) are node pairs, one per verified match."""

    image_ids: np.ndarray
    keypoint_ids: np.ndarray
    track_ids: np.ndarray
    edges: np.ndarray

    @property
    def num_tracks(self) -> int:
        return int(self.track_ids.max()) + 1 if len(self.track_ids) else 0

    def track_sizes(self) -> np.ndarray:
        return np.bincount(self.track_ids, minlength=self.num_tracks)

    def nodes_by_image(self) -> Iterator[tuple[int, np.ndarray]]:
        """(image id, its nodes) for every image with tracked keypoints, from one sort (not one scan per image)."""
        order = np.argsort(self.image_ids, kind="stable")
        image_ids, starts = np.unique(self.image_ids[order], return_index=True)
        for image_id, nodes in zip(image_ids, np.split(order, starts[1:])):
            yield int(image_id), nodes


def read_verified_matches(database_path: str | os.PathLike) -> dict[tuple[int, int], np.ndarray]:
    """{(image id, image id): (M, 2) keypoint indices} of the pairs with geometrically verified inliers."""
    import pycolmap  # here, not above: the tracks (and the patch alignment on them) serve machines without pycolmap

    with pycolmap.Database.open(database_path) as database:
        pair_ids, geometries = database.read_two_view_geometries()
    verified = {}
    for pair_id, geometry in zip(pair_ids, geometries):
        inliers = np.asarray(geometry.inlier_matches, dtype=np.int64).reshape(-1, 2)
        if len(inliers):
            verified[tuple(int(i) for i in pycolmap.pair_id_to_image_pair(pair_id))] = inliers
    return verified


def build_tracks(verified: dict[tuple[int, int], np.ndarray]) -> Tracks:
    """Connected components of the verified-match graph (every node belongs to a track of at least 2)."""
    if not verified:
        empty = np.zeros(0, np.int64)
        return Tracks(empty, empty, empty, np.zeros((0, 2), np.int64))
    ends = []
    for (first, second), inliers in verified.items():
        ends.append(np.stack([np.full(len(inliers), first), inliers[:, 0],
                              np.full(len(inliers), second), inliers[:, 1]], axis=1))
    ends = np.concatenate(ends)
    keys = np.concatenate([ends[:, :2], ends[:, 2:]])  # (2E, 2): (image id, keypoint id) of both ends
    unique, node_of = np.unique(keys, axis=0, return_inverse=True)
    node_of = node_of.reshape(-1)
    count = len(ends)
    edges = np.stack([node_of[:count], node_of[count:]], axis=1)
    graph = coo_matrix((np.ones(count, np.int8), (edges[:, 0], edges[:, 1])), shape=(len(unique), len(unique)))
    _, track_ids = connected_components(graph, directed=False)
    return Tracks(unique[:, 0].astype(np.int64), unique[:, 1].astype(np.int64), track_ids.astype(np.int64), edges)
