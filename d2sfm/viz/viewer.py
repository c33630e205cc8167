"""The browser viewer of a model (viser): cameras as frusta with their photos, points in colour, and a panel with the
photo and keypoints of a selected camera.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from d2sfm.errors import D2sfmError
from d2sfm.io.keypoints import colmap_xy_to_opencv_xy
from d2sfm.io.model_files import read_model
from d2sfm.viz.model_picture import FRAMED_SHARE, frustum_size, model_arrays, viewing_frame

THUMBNAIL_EDGE = 160  # pixels: the photos inside the frusta


PANEL_EDGE = 640  # pixels: the photo shown for a selected camera


def find_model(scene: Path) -> Path:
    """SCENE/sparse/0 for a scene folder, or the folder itself when it is a model."""
    for candidate in (scene, scene / "sparse" / "0"):
        if (candidate / "images.bin").is_file() or (candidate / "images.txt").is_file():
            return candidate
    raise D2sfmError(f"{scene}: holds no COLMAP model (looked for images.bin in it and in sparse/0); run "
                     "python -m d2sfm.reconstruct on it first or give the model folder")


def read_photo(image_dir: Path | None, name: str, edge: int) -> np.ndarray | None:
    """The photo as BGR, resized so that its longer side is ``edge`` pixels; None when it is not there."""
    from d2sfm.io.images import ImageReadError, read_image_bgr

    if image_dir is None:
        return None
    try:
        image = read_image_bgr(image_dir / name)
    except ImageReadError:
        return None
    scale = edge / max(image.shape[:2])
    return cv2.resize(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def rgb(image_bgr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image_bgr[:, :, ::-1])


def keypoint_picture(image_dir: Path | None, image, camera) -> np.ndarray | None:
    """The photo (RGB) with the model's keypoints of this image: green with a 3D point, red without."""
    photo = read_photo(image_dir, image.name, PANEL_EDGE)
    if photo is None:
        return None
    xy = np.array([p.xy for p in image.points2D], np.float64).reshape(-1, 2)
    triangulated = np.array([p.has_point3D() for p in image.points2D], bool)
    xy = colmap_xy_to_opencv_xy(xy * np.array([photo.shape[1] / camera.width, photo.shape[0] / camera.height]))
    for selected, colour in ((~triangulated, (40, 40, 230)), (triangulated, (60, 200, 60))):
        for x, y in np.round(xy[selected]).astype(int):
            cv2.circle(photo, (int(x), int(y)), 2, colour, -1, cv2.LINE_AA)
    return rgb(photo)


def quaternion_wxyz(rotation: np.ndarray) -> np.ndarray:
    """A rotation matrix as a unit quaternion (w, x, y, z)."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(rotation).as_quat()
    return np.array([w, x, y, z])


def serve(model_dir: Path, image_dir: Path | None, host: str, port: int, max_points: int):
    """Start the viser server with the model drawn; returns it (its ``stop`` ends it), the points sent and the
    cameras drawn."""
    import viser

    model = read_model(model_dir)
    arrays = model_arrays(model)
    server = viser.ViserServer(host=host, port=port, verbose=False)
    points, colours = arrays.points, arrays.colours
    if len(points) > max_points:  # the browser stays responsive; the full model stays on disk
        keep = np.random.default_rng(0).choice(len(points), max_points, replace=False)
        points, colours = points[keep], colours[keep]
    frame = viewing_frame(arrays.rotations)
    low, high = (np.percentile(points, FRAMED_SHARE, axis=0) if len(points) >= 20 else
                 (np.concatenate([points, arrays.centres]).min(0), np.concatenate([points, arrays.centres]).max(0)))
    extent = float(np.linalg.norm(high - low)) or 1.0
    centre = (low + high) / 2
    server.scene.set_up_direction(-frame[1])
    server.scene.add_point_cloud("/points", points.astype(np.float32), colours, point_size=extent / 250,
                                 point_shape="circle")
    server.initial_camera.look_at = centre
    server.initial_camera.position = centre - frame[2] * 0.9 * extent
    server.initial_camera.up = -frame[1]
    panel_title = server.gui.add_markdown("Click a camera to see its photo and keypoints.")
    panel_image = server.gui.add_image(np.full((8, 8, 3), 255, np.uint8), label="photo")
    depth = frustum_size(arrays.centres, extent / np.sqrt(3))
    images = {image.name: image for image in model.images.values() if image.has_pose}
    for name, rotation, position in zip(arrays.names, arrays.rotations, arrays.centres):
        image = images[name]
        camera = model.cameras[image.camera_id]
        photo = read_photo(image_dir, name, THUMBNAIL_EDGE)
        thumbnail = None if photo is None else rgb(photo)
        fov = 2 * np.arctan(camera.height / 2 / camera.calibration_matrix()[1, 1])
        frustum = server.scene.add_camera_frustum(
            f"/cameras/{name}", fov=float(fov), aspect=camera.width / camera.height, scale=depth,
            color=(200, 30, 30), image=thumbnail,
            wxyz=quaternion_wxyz(rotation.T), position=position)

        def show(_event, image=image, camera=camera) -> None:
            observed = sum(p.has_point3D() for p in image.points2D)
            panel_title.content = (f"**{image.name}**: {len(image.points2D)} keypoints, {observed} with a 3D point "
                                   "(green), the others red")
            picture = keypoint_picture(image_dir, image, camera)
            if picture is not None:
                panel_image.image = picture

        frustum.on_click(show)
    return server, len(points), len(arrays.names)
