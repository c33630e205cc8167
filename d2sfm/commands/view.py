"""``python -m d2sfm.view SCENE``: the model in the browser, to turn around and inspect.

Points in their colours and the registered cameras as frusta holding a thumbnail of their photo; clicking a camera
shows its photo in the side panel with its keypoints (green: those with a 3D point, red: the others). Built on
viser (``pip install -e ".[viewer]"``): a maintained library made for exactly this (3D scenes from Python, served
over a websocket to a three.js client bundled in its wheel, so it works offline and over SSH port forwarding),
where a home-made three.js page would have to re-implement picking, the camera controls and the GUI panel.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from d2sfm.commands.cli import CommandParser, number, run_main
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


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.view", description=__doc__.split("\n\n")[0].replace(
        "``", "") + " Serves it at http://HOST:PORT until Ctrl-C.")
    parser.add_argument("scene", type=Path, help="scene folder (its sparse/0 is shown) or a COLMAP model folder")
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default: SCENE/images)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1; 0.0.0.0 to reach it from other machines)")
    parser.add_argument("--port", type=number(int, at_least=0, at_most=65535), default=8080)
    parser.add_argument("--max-points", type=number(int, at_least=1), default=1_000_000,
                        help="points sent to the browser at most")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import viser  # noqa: F401
    except ImportError:
        raise D2sfmError('the viewer needs viser: pip install -e ".[viewer]" (or pip install viser)') from None
    model_dir = find_model(args.scene)
    image_dir = args.images or (args.scene / "images" if (args.scene / "images").is_dir() else
                                model_dir.parent.parent / "images")
    if not image_dir.is_dir():
        print(f"warning: {image_dir}: no photo folder; the cameras are shown without photos (pass --images DIR)")
        image_dir = None
    try:
        server, points, cameras = serve(model_dir, image_dir, args.host, args.port, args.max_points)
    except OSError as error:
        raise D2sfmError(f"cannot serve on {args.host}:{args.port} ({error}); choose another --port") from None
    port = server.get_port()  # viser moves to the next free port when the one asked for is taken
    if port != args.port:
        print(f"  port {args.port} is in use; serving on {port}")
    print(f"serving {model_dir} ({points} points, {cameras} cameras) at http://{args.host}:{port} "
          "(Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    run_main(main)
