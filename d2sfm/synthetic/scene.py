"""The embedded sample scene: a textured 3D courtyard rendered by ray casting from cameras with known poses.

It needs no download and is ours to redistribute (the textures are procedural, from a seed). ``render_scene``
writes ``images/*.png`` and the true cameras as a COLMAP text model in ``ground_truth/``, which
:mod:`d2sfm.evaluation.ground_truth` scores a reconstruction against, and ``synthetic.json``, the settings it was
rendered with: a rerun with the same settings renders only the views still missing, one with other settings is
refused (``overwrite`` renders the scene again, deleting only what was rendered before).

    python -m d2sfm.synthetic outputs/demo          # render only; d2sfm.reconstruct --demo renders and maps
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from d2sfm.errors import D2sfmError, some_names
from d2sfm.io.atomic import atomic_path, replace_folder, scratch_folder, write_text_atomic
from d2sfm.runtime.run_lock import is_housekeeping

if TYPE_CHECKING:  # imported where used: rendering the views alone needs no pycolmap
    import pycolmap

log = logging.getLogger("d2sfm")
RECORD = "synthetic.json"  # the settings a scene folder was rendered with, written before its first view


@dataclass(frozen=True)
class Plane:
    """A textured rectangle: corner ``origin``, edges ``u_edge`` and ``v_edge`` (world units)."""

    origin: np.ndarray
    u_edge: np.ndarray
    v_edge: np.ndarray
    texture: np.ndarray  # (H, W, 3) uint8 BGR; texture row 0 lies along u_edge at origin


def procedural_texture(rng: np.random.Generator, size: int = 1024) -> np.ndarray:
    """Multi-octave colour noise with random shapes: blobs, corners and edges at many scales."""
    texture = np.zeros((size, size, 3), np.float32)
    for octave in range(2, 8):
        cells = 2 ** octave
        noise = rng.random((cells, cells, 3)).astype(np.float32)
        texture += cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * (0.6 ** (octave - 2))
    texture = (texture - texture.min()) / (np.ptp(texture) + 1e-6) * 160 + 40
    canvas = np.ascontiguousarray(texture.astype(np.uint8))
    for _ in range(120):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        extent = int(rng.integers(size // 64, size // 10))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.rectangle(canvas, (x, y), (x + extent, y + int(extent * rng.uniform(0.3, 1.5))), colour, -1)
        elif kind == 1:
            cv2.circle(canvas, (x, y), extent // 2, colour, -1, cv2.LINE_AA)
        else:
            end = (x + int(rng.integers(-extent, extent)) * 3, y + int(rng.integers(-extent, extent)) * 3)
            cv2.line(canvas, (x, y), end, colour, int(rng.integers(2, 8)), cv2.LINE_AA)
    return canvas


@functools.lru_cache(maxsize=4)
def courtyard(seed: int = 0) -> tuple[Plane, ...]:
    """Ground, three walls and two boxes: enough depth and texture for SfM, simple enough to ray-cast exactly.

    Kept per seed (its ten textures take about a second to make, and a process that renders several scenes, the
    tests' or a benchmark's, asks for the same one again); the arrays are read-only, so no caller can change the
    scene another one gets."""
    rng = np.random.default_rng(seed)
    planes = []

    def add(origin, u_edge, v_edge):
        planes.append(Plane(np.array(origin, float), np.array(u_edge, float), np.array(v_edge, float),
                            procedural_texture(rng)))

    add([-6, -6, 0], [12, 0, 0], [0, 12, 0])  # ground (z up)
    add([-6, 6, 0], [12, 0, 0], [0, 0, 4])  # back wall
    add([-6, -6, 0], [0, 12, 0], [0, 0, 4])  # left wall
    add([6, 6, 0], [0, -12, 0], [0, 0, 4])  # right wall
    for x0, y0, w, d, h in ((-2.5, 0.5, 1.5, 1.5, 1.5), (1.0, -1.5, 2.0, 1.0, 1.0)):
        add([x0, y0, h], [w, 0, 0], [0, d, 0])  # top
        add([x0, y0, 0], [w, 0, 0], [0, 0, h])  # front
        add([x0, y0 + d, 0], [0, -d, 0], [0, 0, h])  # left side
        add([x0 + w, y0, 0], [0, d, 0], [0, 0, h])  # right side
    for plane in planes:
        for array in (plane.origin, plane.u_edge, plane.v_edge, plane.texture):
            array.flags.writeable = False
    return tuple(planes)


def look_at(centre: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-to-camera rotation (x right, y down, z forward) looking from ``centre`` at ``target``, z world up."""
    forward = target - centre
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward])


def camera_poses(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(R world-to-camera, centre) on an arc in front of the back wall, looking at the middle of the yard."""
    rng = np.random.default_rng(seed + 1)
    poses = []
    for angle in np.linspace(-0.45 * np.pi, 0.45 * np.pi, count):
        centre = np.array([5.0 * np.sin(angle), -5.0 * np.cos(angle), 2.2]) + rng.normal(0, 0.1, 3)
        target = np.array([0.0, 1.0, 0.8]) + rng.normal(0, 0.2, 3)
        poses.append((look_at(centre, target), centre))
    return poses


RING_RADII_HEIGHTS = ((3.5, 1.4), (4.5, 2.6), (5.5, 1.8), (6.5, 3.2))


def ring_poses(count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` cameras for a large job: on four arcs at different distances and heights (ring after ring),
    each sweeping the yard from left to right while its gaze pans along the back wall, so that neighbours on an arc
    and cameras of nearby arcs overlap while no two views are the same."""
    rng = np.random.default_rng(seed + 2)
    per_ring = np.diff(np.linspace(0, count, len(RING_RADII_HEIGHTS) + 1).round().astype(int))
    poses = []
    for (radius, height), ring_count in zip(RING_RADII_HEIGHTS, per_ring):
        sweep = min(0.45 * np.pi, np.arcsin(min(1.0, 5.0 / radius)))  # stay 1 unit inside the side walls
        for fraction in np.linspace(0.0, 1.0, ring_count):
            angle = (2 * fraction - 1) * sweep
            centre = np.array([radius * np.sin(angle), 1.0 - radius * np.cos(angle), height]) + rng.normal(0, 0.05, 3)
            target = np.array([3.0 * (fraction - 0.5), 2.5, 0.9]) + rng.normal(0, 0.2, 3)
            poses.append((look_at(centre, target), centre))
    return poses


LAYOUTS = {"arc": camera_poses, "rings": ring_poses}


def view_name(index: int, count: int) -> str:
    """``view_07.png``: zero-padded so that names sort in camera order at any count."""
    return f"view_{index:0{max(2, len(str(count)))}d}.png"


def _camera_rays(rotation: np.ndarray, width: int, height: int, focal: float, pixel_centre: float = 0.5) -> np.ndarray:
    """World-frame ray directions through pixel centres (COLMAP's SfM convention: centres at +0.5), unit depth."""
    columns, rows = np.meshgrid(np.arange(width) + pixel_centre, np.arange(height) + pixel_centre)
    rays_camera = np.stack([(columns - width / 2) / focal, (rows - height / 2) / focal, np.ones_like(columns)], -1)
    return rays_camera @ rotation  # camera -> world: R^T applied to each row vector


def _cast(planes: Sequence[Plane], rays: np.ndarray, centre: np.ndarray):
    """Yield, plane by plane, the pixels where it is the nearest hit so far (a boolean mask) with their texture
    coordinates ``s`` and ``q`` (one value per masked pixel); ``depth`` (along the optical axis) holds the nearest
    hit after the last yield. Each plane costs one (pixels x 3) @ (3 x 3) product: the ray's components along the
    normal and both edges give depth and texture coordinates without building per-pixel 3D points."""
    depth = np.full(rays.shape[:2], np.inf)
    flat_rays, flat_depth = rays.reshape(-1, 3), depth.reshape(-1)
    for plane in planes:
        normal = np.cross(plane.u_edge, plane.v_edge)
        along_normal, along_u, along_v = np.stack([normal, plane.u_edge, plane.v_edge]) @ flat_rays.T
        offset = centre - plane.origin
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (-offset @ normal) / along_normal
        candidates = np.flatnonzero((t > 1e-6) & (t < flat_depth))
        t_hit = t[candidates]
        s = (offset @ plane.u_edge + t_hit * along_u[candidates]) / (plane.u_edge @ plane.u_edge)
        q = (offset @ plane.v_edge + t_hit * along_v[candidates]) / (plane.v_edge @ plane.v_edge)
        inside = (s >= 0) & (s <= 1) & (q >= 0) & (q <= 1)
        hit = np.zeros(depth.shape, bool)
        hit.reshape(-1)[candidates[inside]] = True
        flat_depth[candidates[inside]] = t_hit[inside]
        yield plane, hit, s[inside], q[inside], depth


def _nearest_depth(planes: Sequence[Plane], rays: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Depth of the nearest surface along each ray (inf where only sky is seen)."""
    depth = np.full(rays.shape[:2], np.inf)
    for *_, depth in _cast(planes, rays, centre):
        pass
    return depth


def _sample(texture: np.ndarray, x: np.ndarray, y: np.ndarray, row: int = 1024) -> np.ndarray:
    """Bilinear samples of ``texture`` at the points (x, y), one row of colours per point: only the pixels a
    plane covers are sampled, folded into rows of ``row`` for cv2.remap (which refuses maps of 32767+ rows)."""
    count = len(x)
    rows = -(-count // row)
    maps = [np.zeros(rows * row, np.float32) for _ in range(2)]
    maps[0][:count], maps[1][:count] = x, y
    sampled = cv2.remap(texture, maps[0].reshape(rows, row), maps[1].reshape(rows, row), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
    return sampled.reshape(rows * row, -1)[:count]


def render(planes: Sequence[Plane], rotation: np.ndarray, centre: np.ndarray, width: int, height: int,
           focal: float, supersample: int = 2) -> np.ndarray:
    """Ray-cast the planes (nearest hit wins), sampling textures bilinearly; supersampled against aliasing."""
    w, h, f = width * supersample, height * supersample, focal * supersample
    image = np.empty((h, w, 3), np.float32)
    image[:] = np.array([235, 206, 135], np.float32) * np.linspace(0.8, 1.0, h)[:, None, None]  # sky
    for plane, hit, s, q, _ in _cast(planes, _camera_rays(rotation, w, h, f), centre):
        if not hit.any():
            continue
        texture_h, texture_w = plane.texture.shape[:2]
        image[hit] = _sample(plane.texture, s * texture_w - 0.5, q * texture_h - 0.5)
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).round().clip(0, 255).astype(np.uint8)


def render_xyz(planes: Sequence[Plane], rotation: np.ndarray, centre: np.ndarray, width: int, height: int,
               focal: float) -> np.ndarray:
    """(height, width, 3) world coordinates of the surface seen at each pixel centre, NaN where only sky is
    seen: what an RGB-D scan gives per pixel of a cutout (InLoc's ``XYZcut``)."""
    rays = _camera_rays(rotation, width, height, focal)
    depth = _nearest_depth(planes, rays, centre)
    xyz = centre + rays * depth[..., None]
    xyz[~np.isfinite(depth)] = np.nan
    return xyz


def render_depth_normals(planes: Sequence[Plane], rotation: np.ndarray, centre: np.ndarray, width: int, height: int,
                         focal: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact depth (along the optical axis; 0 where only sky is seen) and unit normals in the camera frame, facing
    the camera: COLMAP's MVS depth and normal maps. These are sampled at integer pixel coordinates, not at +0.5,
    because that is where COLMAP's fusion back-projects map pixel (row, col)."""
    rays = _camera_rays(rotation, width, height, focal, pixel_centre=0.0)
    normals = np.zeros((height, width, 3))
    depth = None
    for plane, hit, *_, depth in _cast(planes, rays, centre):
        normal = rotation @ np.cross(plane.u_edge, plane.v_edge)
        normals[hit] = normal / np.linalg.norm(normal)
    normals[np.einsum("hwc,hwc->hw", normals, rays @ rotation.T) > 0] *= -1  # turn each to face the camera
    finite = np.isfinite(depth)
    return np.where(finite, depth, 0.0), np.where(finite[..., None], normals, 0.0)


def true_model(planes: Sequence[Plane], poses: Sequence[tuple[np.ndarray, np.ndarray]], width: int, height: int,
               focal: float, point_step: int = 0) -> pycolmap.Reconstruction:
    """The true cameras (``view_XX.png``, one pinhole camera) and, with ``point_step``, true surface points: one
    every ``point_step`` pixels of every view, observed in each view where it is the nearest surface."""
    import pycolmap  # here: rendering the views alone (render_views) needs no pycolmap

    truth = pycolmap.Reconstruction()
    truth.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=width, height=height,
                                                      params=[focal, focal, width / 2, height / 2], camera_id=1))
    points = np.empty((0, 3))
    if point_step:
        grid = [render_xyz(planes, rotation, centre, width, height, focal)[point_step // 2::point_step,
                                                                             point_step // 2::point_step]
                for rotation, centre in poses]
        points = np.concatenate([xyz.reshape(-1, 3) for xyz in grid])
        points = points[np.isfinite(points).all(1)]
    tracks: list[list[tuple[int, int]]] = [[] for _ in points]
    for index, (rotation, centre) in enumerate(poses, start=1):
        points2d = []
        if len(points):
            camera_points = (points - centre) @ rotation.T
            with np.errstate(divide="ignore", invalid="ignore"):
                xy = focal * camera_points[:, :2] / camera_points[:, 2:] + [width / 2, height / 2]
            inside = (camera_points[:, 2] > 0) & (xy >= 0).all(1) & (xy < [width, height]).all(1)
            depth = np.full(len(points), np.inf)
            depth_map = _nearest_depth(planes, _camera_rays(rotation, width, height, focal), centre)
            cells = np.floor(xy[inside]).astype(int)
            depth[inside] = depth_map[cells[:, 1], cells[:, 0]]
            visible = inside & (np.abs(depth - camera_points[:, 2]) < 0.02 * camera_points[:, 2])
            for point_index in np.flatnonzero(visible):
                tracks[point_index].append((index, len(points2d)))
                points2d.append(pycolmap.Point2D(xy[point_index]))
        image = pycolmap.Image(name=view_name(index, len(poses)), points2D=points2d, camera_id=1, image_id=index)
        truth.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(rotation), -rotation @ centre))
    for point, track in zip(points, tracks):
        if len(track) >= 2:
            truth.add_point3D(point, pycolmap.Track([pycolmap.TrackElement(*element) for element in track]))
    return truth


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _read_record(scene_dir: Path) -> dict | None:
    path = scene_dir / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("views"), int):
        raise D2sfmError(f"{path}: damaged; delete it to render the scene again (pass --overwrite to delete the "
                         "views as well)")
    return record


def _scene_names(scene_dir: Path) -> tuple[list[str], list[str]]:
    """(the entries of the scene folder, the files of its images/), without d2sfm's locks and temporary files."""
    def listed(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir()
                      if not is_housekeeping(p.name))
    return listed(scene_dir), listed(scene_dir / "images")


def prepare_scene(scene_dir: Path, settings: dict, overwrite: bool = False) -> set[str]:
    """Check ``scene_dir`` before any view is written and record ``settings`` there; returns the views already
    rendered with these settings (a rerun renders only the rest). Other settings are refused, or with
    ``overwrite`` the views, truth and record of the earlier ones are deleted first; a scene holding what these
    settings would not write (a user's photo, stale views of another size, a reconstruction of the old views) is
    refused before anything is deleted, so that no folder ever mixes two scenes."""
    names = [view_name(index, settings["views"]) for index in range(1, settings["views"] + 1)]
    if scene_dir.exists() and not scene_dir.is_dir():
        raise D2sfmError(f"{scene_dir}: is a file, not a folder; choose a folder for the scene")
    saved = _read_record(scene_dir)
    entries, images = _scene_names(scene_dir)
    if saved == settings:  # the same scene: resume (or, overwriting, render every view again in place)
        return set() if overwrite else set(images) & set(names)
    if saved is None:  # a new scene, or one an earlier release rendered: its views are rendered again in place
        stray = [name for name in images if name not in names]
        if stray:
            raise D2sfmError(f"{scene_dir / 'images'}: holds files this synthetic scene would not write "
                             f"({some_names(stray)}); choose an empty or new folder for the scene")
    else:
        changes = [f"{'' if key == 'focal' else '--'}{key} {_shown(saved.get(key))} -> {_shown(value)}"
                   for key, value in settings.items() if saved.get(key) != value]
        if not overwrite:
            raise D2sfmError(f"{scene_dir}: rendered with other settings ({', '.join(changes)}); pass --overwrite "
                             "to render it again, or choose another folder")
        rendered = [view_name(index, saved["views"]) for index in range(1, saved["views"] + 1)]
        ours = {"images/", "ground_truth/", "ground_truth.part/", "ground_truth.old/", RECORD}
        others = [f"images/{name}" for name in images if name not in rendered] + \
            [name for name in entries if name not in ours]
        if others:
            raise D2sfmError(f"{scene_dir}: holds more than the synthetic scene ({some_names(others)}), made from or "
                             "beside the old views; choose an empty or new folder for the scene")
        for name in rendered:
            (scene_dir / "images" / name).unlink(missing_ok=True)
        for name in ("ground_truth", "ground_truth.part", "ground_truth.old"):
            shutil.rmtree(scene_dir / name, ignore_errors=True)
        log.info(f"  deleted the {len(rendered)} views and the truth rendered with the earlier settings")
    write_text_atomic(scene_dir / RECORD, json.dumps(settings, indent=2) + "\n")
    return set()


def render_views(scene_dir: str | Path, count: int = 12, width: int = 800, height: int = 600, focal: float = 640.0,
                 seed: int = 0, layout: str = "arc", progress: bool = False, overwrite: bool = False) -> list[str]:
    """Only ``images/view_XX.png`` of ``render_scene`` (no true model): photos of a scene that reconstructs, for a
    process without pycolmap (the GPU acceptance run's first call). Returns the names."""
    scene_dir = Path(scene_dir)
    done = prepare_scene(scene_dir, _settings(count, width, height, focal, seed, layout), overwrite)
    return _write_views(scene_dir, courtyard(seed), LAYOUTS[layout](count, seed), width, height, focal,
                        progress, done)


def _settings(count: int, width: int, height: int, focal: float, seed: int, layout: str) -> dict:
    if layout not in LAYOUTS:
        raise D2sfmError(f"layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    return {"views": int(count), "width": int(width), "height": int(height), "focal": float(focal),
            "seed": int(seed), "layout": layout}


def _write_views(scene_dir: Path, planes: Sequence[Plane], poses: Sequence[tuple[np.ndarray, np.ndarray]],
                 width: int, height: int, focal: float, progress: bool, done: set[str] = frozenset()) -> list[str]:
    """Each pose's view as ``images/view_XX.png`` (the true model's names: image id = 1-based pose index), but
    those in ``done`` (rendered earlier with the same settings)."""
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    names = [view_name(index, len(poses)) for index in range(1, len(poses) + 1)]
    todo = [(name, pose) for name, pose in zip(names, poses) if name not in done]
    if done:
        log.info(f"  {len(names) - len(todo)} of the {len(names)} views rendered earlier with these settings, kept")
    for name, (rotation, centre) in tqdm(todo, desc="rendering", unit="img", disable=not progress or not todo):
        ok, encoded = cv2.imencode(".png", render(planes, rotation, centre, width, height, focal))
        with atomic_path(scene_dir / "images" / name) as temporary:
            temporary.write_bytes(encoded.tobytes())
    return names


def render_scene(scene_dir: str | Path, count: int = 12, width: int = 800, height: int = 600,
                 focal: float = 640.0, seed: int = 0, layout: str = "arc", progress: bool = False,
                 overwrite: bool = False) -> list[str]:
    """Write ``images/view_XX.png`` and the true model in ``ground_truth/`` (COLMAP text); returns the names. A
    folder rendered with other settings is refused unless ``overwrite`` (see ``prepare_scene``)."""
    scene_dir = Path(scene_dir)
    done = prepare_scene(scene_dir, _settings(count, width, height, focal, seed, layout), overwrite)
    planes = courtyard(seed)
    poses = LAYOUTS[layout](count, seed)
    truth = true_model(planes, poses, width, height, focal)
    _write_views(scene_dir, planes, poses, width, height, focal, progress, done)
    truth_dir = scene_dir / "ground_truth"
    scratch = scratch_folder(truth_dir)
    truth.write_text(scratch)  # written last and renamed into place: its presence says the scene is complete
    replace_folder(scratch, truth_dir)
    return [image.name for image in sorted(truth.images.values(), key=lambda image: image.image_id)]


def distance_to_surfaces(planes: Sequence[Plane], points: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest of the scene's rectangles (world units)."""
    points = np.asarray(points, float).reshape(-1, 3)
    nearest = np.full(len(points), np.inf)
    for plane in planes:
        relative = points - plane.origin
        s = np.clip(relative @ plane.u_edge / (plane.u_edge @ plane.u_edge), 0, 1)
        q = np.clip(relative @ plane.v_edge / (plane.v_edge @ plane.v_edge), 0, 1)
        closest = plane.origin + s[:, None] * plane.u_edge + q[:, None] * plane.v_edge
        nearest = np.minimum(nearest, np.linalg.norm(points - closest, axis=1))
    return nearest


def surface_points(planes: Sequence[Plane], camera: pycolmap.Camera, cam_from_world: pycolmap.Rigid3d,
                   xy: np.ndarray) -> np.ndarray:
    """World points of the nearest surface seen at COLMAP-convention pixels ``xy`` (N, 2); NaN on the sky."""
    rotation = cam_from_world.rotation.matrix()
    centre = -rotation.T @ cam_from_world.translation
    rays = np.concatenate([camera.cam_from_img(np.asarray(xy, np.float64)), np.ones((len(xy), 1))], 1) @ rotation
    depth = _nearest_depth(planes, rays[:, None, :], centre)[:, 0]
    points = centre + rays * depth[:, None]
    points[~np.isfinite(depth)] = np.nan
    return points


def transfer_to_view(planes: Sequence[Plane], truth: pycolmap.Reconstruction, source: pycolmap.Image,
                     target: pycolmap.Image, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the truth puts pixels ``xy`` (N, 2) of image ``source`` in image ``target``: each is cast onto the true
    surface and projected. Returns the (N, 2) positions and whether each is seen there (not on the sky, in front,
    inside the image and not hidden behind another surface)."""
    camera_t = truth.cameras[target.camera_id]
    points = surface_points(planes, truth.cameras[source.camera_id], source.cam_from_world(), xy)
    in_camera = target.cam_from_world() * np.nan_to_num(points, nan=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = camera_t.img_from_cam(in_camera)
    inside = (np.isfinite(points).all(1) & (in_camera[:, 2] > 0) & np.isfinite(projected).all(1)
              & (projected >= 0).all(1) & (projected < [camera_t.width, camera_t.height]).all(1))
    seen_depth = np.full(len(points), np.inf)
    seen = surface_points(planes, camera_t, target.cam_from_world(), projected[inside])
    seen_depth[inside] = (target.cam_from_world() * np.nan_to_num(seen, nan=1e9))[:, 2]
    visible = inside & (np.abs(seen_depth - in_camera[:, 2]) < 0.01 * in_camera[:, 2])
    return projected, visible


def match_transfer_errors(truth_dir: str | Path, keypoints: dict[str, np.ndarray],
                          matches: dict[tuple[str, str], np.ndarray], seed: int = 0) -> np.ndarray:
    """How far matched keypoints are from where the truth puts them: for each match (a, b), keypoint a is cast
    onto the true surface and projected into b's image, and the distance to keypoint b (pixels) is returned; and
    the same from b to a. Matches whose surface point is hidden in the other view are left out."""
    import pycolmap

    truth = pycolmap.Reconstruction(truth_dir)
    planes = courtyard(seed)
    by_name = {image.name: image for image in truth.images.values()}
    errors = []
    for (name_a, name_b), pairs in matches.items():
        for (source, index_s), (target, index_t) in (((name_a, 0), (name_b, 1)), ((name_b, 1), (name_a, 0))):
            projected, visible = transfer_to_view(planes, truth, by_name[source], by_name[target],
                                                  keypoints[source][pairs[:, index_s], :2])
            target_points = keypoints[target][pairs[visible][:, index_t], :2]
            errors.append(np.linalg.norm(projected[visible] - target_points, axis=1))
    return np.concatenate(errors) if errors else np.zeros(0)


# The command's bounds: a 4096 x 4096 view renders (2x supersampled, in float64) in about 9 GB; 60000 x 60000 would
# need terabytes and ended in a MemoryError. The 'rings' layout is for hundreds or thousands of views.
