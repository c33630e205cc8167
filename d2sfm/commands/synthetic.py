"""``python -m d2sfm.synthetic scene/``: render the embedded synthetic courtyard with its true cameras.

The settings are recorded in ``scene/synthetic.json``: a rerun with the same ones renders only the views still
missing (an interrupted run resumes), one with other settings is refused; ``--overwrite`` renders the scene again,
deleting only the views and truth rendered before (a folder holding anything else is refused).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from d2sfm.commands.cli import CommandParser, run_main
from d2sfm.commands.options import number
from d2sfm.synthetic.scene import LAYOUTS, render_scene

MAX_SIDE = 4096
MAX_VIEWS = 10000


def main(argv: Sequence[str] | None = None) -> int:
    parser = CommandParser(prog="python -m d2sfm.synthetic",
                           description="Render the embedded synthetic courtyard scene with known cameras.")
    parser.add_argument("scene", type=Path, help="output folder: images/ and ground_truth/ are written there")
    parser.add_argument("--views", type=number(int, at_least=2, at_most=MAX_VIEWS), default=12,
                        help=f"number of images (default 12, at most {MAX_VIEWS})")
    parser.add_argument("--width", type=number(int, at_least=32, at_most=MAX_SIDE), default=800,
                        help=f"image width in pixels (default 800, at most {MAX_SIDE}: rendering takes about "
                        "0.6 KB of memory per pixel, 2.4 GB at 2048 x 2048)")
    parser.add_argument("--height", type=number(int, at_least=32, at_most=MAX_SIDE), default=600,
                        help=f"image height in pixels (default 600, at most {MAX_SIDE})")
    parser.add_argument("--seed", type=int, default=0,
                        help="seeds the textures and the camera jitter: another seed is another scene (default 0)")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="arc",
                        help="'arc': one arc in front of the back wall (default); 'rings': four arcs at different "
                        "distances and heights, for jobs of hundreds or thousands of views")
    parser.add_argument("--overwrite", action="store_true",
                        help="render again a scene rendered with other settings (deletes its views and truth only)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    names = render_scene(args.scene, args.views, args.width, args.height, focal=0.8 * args.width, seed=args.seed,
                         layout=args.layout, progress=not args.quiet, overwrite=args.overwrite)
    print(f"wrote {len(names)} images to {args.scene / 'images'} and the true cameras to {args.scene / 'ground_truth'}")
    return 0


if __name__ == "__main__":
    run_main(main)
