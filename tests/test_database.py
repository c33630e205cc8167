
import numpy as np
import pycolmap
import pytest
from PIL import Image

from d2sfm.database import create_database, read_image_ids


def _write_photos(folder):
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"
    exif.get_ifd(0x8769)[0x920A] = 24.0  # focal length (mm)
    exif.get_ifd(0x8769)[0xA405] = 35  # focal length in 35 mm film
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
