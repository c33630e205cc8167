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

from d2sfm.commands.cli import CommandParser, loading_the_work, run_main
from d2sfm.commands.options import number
from d2sfm.errors import D2sfmError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="python -m d2sfm.view", description=__doc__.split("\n\n")[0].replace(
        "``", "") + " Serves it at http://HOST:PORT until Ctrl-C.")
    parser.add_argument("scene", type=Path, help="scene folder (its sparse/0 is shown) or a COLMAP model folder")
    parser.add_argument("--images", type=Path, default=None, help="photo folder (default: SCENE/images)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1; 0.0.0.0 to reach it from other machines)")
    parser.add_argument("--port", type=number(int, at_least=0, at_most=65535), default=8080,
                        help="port to serve on (default 8080; when it is taken, another, printed at start)")
    parser.add_argument("--max-points", type=number(int, at_least=1), default=1_000_000,
                        help="points sent to the browser at most (default 1000000; a random subset beyond)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import viser  # noqa: F401
    except ImportError:
        raise D2sfmError('the viewer needs viser: pip install -e ".[viewer]" (or pip install viser)') from None
    with loading_the_work():  # pycolmap and scipy: after the options
        from d2sfm.viz.viewer import find_model, serve

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
