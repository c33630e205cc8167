"""COLMAP's and OpenCV's own log lines, shown only with ``--verbose``.

Their lines (``E20261122 ... sfm.cc:310] Failed to create any sparse model``, ``[ERROR:0@0.253] global
grfmt_png.cpp:297 readHeader ...``) name source files, not the user's problem; d2sfm reports what they meant in its
own words (an image skipped and why, no model and why). ``run_main`` silences both before a command starts, and
commands with ``--verbose`` turn them back on.
"""

from __future__ import annotations

COLMAP_ALL, COLMAP_FATAL_ONLY = 0, 3  # glog levels: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL
OPENCV_SILENT, OPENCV_INFO = 0, 4  # cv::utils::logging::LogLevel, the same numbers in OpenCV 4 and 5


def set_library_logs(verbose: bool) -> None:
    """In this process, and (through the environment) in the processes it starts: image loaders, Ray workers.
    pycolmap is not imported for this (a command's --help must not wait for it): glog reads GLOG_minloglevel when
    pycolmap loads, and where it is loaded already its level is set here."""
    import os
    import sys

    import cv2

    os.environ["OPENCV_LOG_LEVEL"] = "INFO" if verbose else "SILENT"
    os.environ["GLOG_minloglevel"] = str(COLMAP_ALL if verbose else COLMAP_FATAL_ONLY)

    # OpenCV 5 has the setter in cv2.utils.logging only, OpenCV 4 at the top level only
    opencv_logging = getattr(cv2.utils, "logging", cv2)
    opencv_logging.setLogLevel(OPENCV_INFO if verbose else OPENCV_SILENT)
    pycolmap = sys.modules.get("pycolmap")
    if pycolmap is not None:
        pycolmap.logging.minloglevel = COLMAP_ALL if verbose else COLMAP_FATAL_ONLY


def add_verbose_argument(parser) -> None:
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's and OpenCV's own log lines")
