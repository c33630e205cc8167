
import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2sfm.sfm.database import create_database, read_image_ids, verify_pairs


def _write_photos(folder):
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
    # the Exif sub-IFD as a dict: focal length (mm), focal length in 35 mm film (Pillow before 11.3 drops values
    # set through get_ifd() when saving)
    exif[0x8769] = {0x920A: 24.0, 0xA405: 35}
    Image.fromarray(pixels).save(folder / "with_exif.jpg", exif=exif)
    Image.fromarray(pixels).save(folder / "without_exif.jpg")
    Image.fromarray(pixels[:200]).save(folder / "smaller.jpg")


def test_cameras_come_from_exif_like_colmap(tmp_path):
    images = tmp_path / "images"
    _write_photos(images)
    names = ["with_exif.jpg", "without_exif.jpg", "smaller.jpg"]
    ids = create_database(tmp_path / "db.db", images, names, camera_mode="auto")
    assert set(ids) == set(names)
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        cameras = {name: database.read_camera(database.read_image(i).camera_id) for name, i in ids.items()}
        assert database.num_frames() == 3  # frames exist, which pycolmap's mappers need
    exif_focal = cameras["with_exif.jpg"].params[0]
    assert exif_focal == pytest.approx(pycolmap.infer_camera_from_image(images / "with_exif.jpg").params[0])
    assert exif_focal != pytest.approx(1.2 * 400)
    assert cameras["without_exif.jpg"].params[0] == pytest.approx(1.2 * 400)  # COLMAP's default prior
    assert cameras["smaller.jpg"].height == 200


def test_single_camera_and_camera_model(tmp_path):
    images = tmp_path / "images"
    _write_photos(images)
    ids = create_database(tmp_path / "db.db", images, ["with_exif.jpg", "without_exif.jpg"],
                          camera_mode="single", camera_model="OPENCV")
    with pycolmap.Database.open(tmp_path / "db.db") as database:
        cameras = database.read_all_cameras()
        assert len(cameras) == 1 and cameras[0].model == pycolmap.CameraModelId.OPENCV
        assert {database.read_image(i).camera_id for i in ids.values()} == {cameras[0].camera_id}


@pytest.mark.integration
def test_reads_the_old_schema_benchmark_database(shared):
    path = shared / "data" / "aachen_local_features" / "database.db"
    before = path.read_bytes()
    ids = read_image_ids(path)
    assert path.read_bytes() == before, "reading must not upgrade the benchmark's database in place"
    assert len(ids) == 5401
    assert sum(name.startswith("db/") for name in ids) == 5401 - 824 - 98
    assert sum(name.startswith("query/day/") for name in ids) == 824
    assert sum(name.startswith("query/night/") for name in ids) == 98



def _noisy_matches(folder, pairs_reversed: bool):
    """Four images whose matches follow homographies with 2 px noise (many inliers near the 4 px threshold) and
    40% outliers, so that RANSAC's inlier set depends on its random draws; all six pairs listed, in order or
    reversed."""
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    names = [f"{index}.jpg" for index in range(4)]
    for name in names:
        Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(images / name)
    ids = create_database(folder / "db.db", images, names, camera_mode="single")
    points = rng.uniform([0, 0], [400, 300], (400, 2))
    pairs = [(first, second) for index, first in enumerate(names) for second in names[index + 1:]]
    with pycolmap.Database.open(folder / "db.db") as database:
        for k, name in enumerate(names):
            homography = np.array([[1 + 0.02 * k, 0.01 * k, 5.0 * k], [-0.01 * k, 1 - 0.01 * k, -3.0 * k],
                                   [1e-5 * k, 0, 1]])
            mapped = np.c_[points, np.ones(len(points))] @ homography.T
            keypoints = mapped[:, :2] / mapped[:, 2:] + rng.normal(0, 2.0, points.shape)
            outliers = rng.random(len(points)) < 0.4
            keypoints[outliers] = rng.uniform([0, 0], [400, 300], (outliers.sum(), 2))
            database.write_keypoints(ids[name], keypoints.astype(np.float32))
        for first, second in pairs:
            database.write_matches(ids[first], ids[second], np.repeat(np.arange(len(points)), 2).reshape(-1, 2)
                                   .astype(np.uint32))
    listed = pairs[::-1] if pairs_reversed else pairs
    (folder / "pairs.txt").write_text("".join(f"{first} {second}\n" for first, second in listed))
    return folder / "db.db", folder / "pairs.txt"


def _inliers(database_path) -> dict[int, np.ndarray]:
    with pycolmap.Database.open(database_path) as database:
        pair_ids, geometries = database.read_two_view_geometries()
    return {pair_id: np.asarray(geometry.inlier_matches) for pair_id, geometry in zip(pair_ids, geometries)}


def test_verification_does_not_depend_on_the_order_of_work(tmp_path):
    """The same matches verify to the same inliers whatever order the pairs are processed in (pycolmap's
    unseeded RANSAC continues one random stream per thread, so order and thread scheduling changed the inliers
    of every pair here), and reruns and benchmark variants therefore map the same graph."""
    runs = []
    for pairs_reversed in (False, True):
        folder = tmp_path / str(pairs_reversed)
        folder.mkdir()
        database, pairs = _noisy_matches(folder, pairs_reversed)
        assert verify_pairs(database).verified_pairs == 6
        runs.append(_inliers(database))
    assert runs[0].keys() == runs[1].keys()
    for pair_id, inliers in runs[0].items():
        assert 100 < len(inliers) < 300
        assert np.array_equal(inliers, runs[1][pair_id])
