"""What every command does the same way: bounds on numeric options, one-line errors (argparse's and the operating
system's), a SIGTERM handled like Ctrl-C, the libraries' logs behind --verbose, and SQLite databases replaced and
read without leaving (or tripping over) -wal and -shm files."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import cv2
import pycolmap
import pytest

from d2sfm.commands.cli import CommandParser
from d2sfm.commands.library_logs import COLMAP_ALL, COLMAP_FATAL_ONLY, OPENCV_INFO, OPENCV_SILENT, set_library_logs
from d2sfm.commands.options import number
from d2sfm.errors import D2sfmError
from d2sfm.io.atomic import atomic_database, copy_database
from d2sfm.sfm.database import read_image_ids
from tests.in_process import command_in_process


def command(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, **kwargs)


def test_numeric_options_are_checked_against_their_bounds(capsys):
    parser = CommandParser(prog="tool")
    parser.add_argument("--count", type=number(int, at_least=1))
    parser.add_argument("--ratio", type=number(float, above=0, at_most=1))
    assert vars(parser.parse_args(["--count", "3", "--ratio", "1"])) == {"count": 3, "ratio": 1.0}
    for bad, why in [(["--count", "0"], ">= 1"), (["--count", "2.5"], "not an integer"),
                     (["--ratio", "0"], "> 0 and <= 1"), (["--ratio", "nan"], "out of range"),
                     (["--count", "-1"], ">= 1"), (["--ratio", "inf"], "out of range"),
                     (["--ratio", "1.5"], "<= 1")]:
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(bad)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1, error
        assert error.startswith(f"error: tool: argument {bad[0]}: ") and why in error and "tool --help" in error


def test_bad_option_values_stop_every_command_in_one_line(tmp_path):
    """Before, a negative --max-keypoints crashed in torch.topk after extraction had started, and a minimum model
    size of -1 reached COLMAP's option check only after matching."""
    for args, option in [(("d2sfm.reconstruct", tmp_path, "--max-keypoints", "-1"), "--max-keypoints"),
                         (("d2sfm.reconstruct", tmp_path, "--min-model-size", "-1"), "--min-model-size"),
                         (("d2sfm.extract", tmp_path, "-o", tmp_path / "f.h5", "--batch-size", "0"), "--batch-size"),
                         (("d2sfm.localize", "aachen", "--min-inlier-ratio", "2"), "--min-inlier-ratio"),
                         (("d2sfm.view", tmp_path, "--port", "99999"), "--port")]:
        # the first as a user runs it, the others through the same main in this process (seconds of imports less)
        run = command(*args) if option == "--max-keypoints" else command_in_process(*args)
        assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
        assert f"argument {option}:" in run.stderr and "--help" in run.stderr and not run.stdout


def test_refine_refuses_options_its_mode_does_not_use(tmp_path):
    """An option the chosen mode ignores must not pass silently: a user who asked for featuremetric refinement of
    a model, or track completion of a database, would get something else than asked."""
    images = tmp_path / "images"
    images.mkdir()
    for args, named in [(("--model", tmp_path, "--method", "featuremetric"), "--method"),
                        (("--model", tmp_path, "--weights", "d2_tf"), "--weights"),
                        ((tmp_path / "database.db", "--complete-tracks"), "--complete-tracks"),
                        ((tmp_path / "database.db", "--weights", "d2_tf"), "--weights")]:
        run = command_in_process("d2sfm.refine", *args, "--images", images)
        assert run.returncode == 2 and run.stderr.count("\n") == 1 and named in run.stderr, run.stderr


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    run = command("d2sfm.synthetic", blocker / "scene", "--views", "2")
    assert run.returncode == 2 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("error: ") and str(blocker) in run.stderr and "Traceback" not in run.stderr
    assert "a file stands where a folder is needed" in run.stderr


def test_an_output_that_is_a_folder_or_an_input_that_is_one_photo_is_named(tmp_path):
    """Before, the rename's error named d2sfm's temporary file (.out.json.x1y2.part), and one photo given as the
    image folder was read as a list file that is not UTF-8."""
    poses = tmp_path / "poses.txt"
    poses.write_text("a.jpg 1 0 0 0 0 0 0\n")
    (tmp_path / "out.json").mkdir()
    run = command_in_process("d2sfm.evaluate", "poses", "--gt", poses, "--pred", poses, "--json",
                             tmp_path / "out.json")
    assert run.returncode == 2 and "out.json: is a folder" in run.stderr and ".part" not in run.stderr, run.stderr
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff")
    run = command_in_process("d2sfm.extract", photo, "-o", tmp_path / "f.h5")
    assert run.returncode == 2 and "photo.jpg: a photo, where a folder" in run.stderr, run.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    run = command_in_process("d2sfm.evaluate", "poses", "--gt", empty, "--pred", poses)
    assert run.returncode == 2 and "empty.txt: holds no poses" in run.stderr, run.stderr


def test_sigterm_stops_a_command_like_ctrl_c(tmp_path):
    """`kill`, `timeout` and `docker stop` send SIGTERM: pycolmap's handler printed a native stack dump."""
    process = subprocess.Popen([sys.executable, "-m", "d2sfm.synthetic", tmp_path / "scene", "--views", "400"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "scene" / "images").glob("*")) and time.monotonic() < deadline:
            time.sleep(0.2)  # rendering has begun: run_main's handlers are in place
        process.send_signal(signal.SIGTERM)
        _, error = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, error
    assert error.strip().splitlines()[-1] == "interrupted: finished work is saved; rerun the same command to resume"
    assert "Aborted" not in error and "stack trace" not in error, error  # (the progress bar is on stderr too)


def test_library_logs_follow_verbose():
    try:
        set_library_logs(verbose=True)
        assert pycolmap.logging.minloglevel == COLMAP_ALL
        assert getattr(cv2.utils, "logging", cv2).getLogLevel() == OPENCV_INFO
        set_library_logs(verbose=False)
        assert pycolmap.logging.minloglevel == COLMAP_FATAL_ONLY
        assert getattr(cv2.utils, "logging", cv2).getLogLevel() == OPENCV_SILENT
    finally:
        set_library_logs(verbose=False)


def _database(path, name):
    pycolmap.Database.open(path).close()
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("INSERT INTO images (image_id, name, camera_id) VALUES (1, ?, 1)", (name,))


def _side_files(path):
    return sorted(p.name for p in path.parent.glob(f"{path.name}-*"))


def test_a_replaced_database_does_not_inherit_a_killed_process_s_log(tmp_path):
    """A process killed with database.db open leaves its -wal and -shm; SQLite read them against the rebuilt file
    and found it 'malformed' on every rerun, --overwrite included."""
    path = tmp_path / "database.db"
    _database(path, "old.jpg")
    holder = sqlite3.connect(path)  # a writer that never checkpoints, as a killed process
    holder.execute("PRAGMA wal_autocheckpoint=0")
    for index in range(50):
        holder.execute("INSERT INTO images (image_id, name, camera_id) VALUES (?, ?, 1)", (index + 2, f"{index}.jpg"))
    holder.commit()
    kept = {suffix: (tmp_path / f"database.db{suffix}").read_bytes() for suffix in ("-wal", "-shm")}
    holder.close()  # (closing checkpoints and removes them; put back what a SIGKILL would have left)
    for suffix, content in kept.items():
        (tmp_path / f"database.db{suffix}").write_bytes(content)

    with atomic_database(path) as scratch:
        _database(scratch, "new.jpg")
    assert _side_files(path) == []
    assert read_image_ids(path) == {"new.jpg": 1}


def test_reading_a_database_leaves_no_side_files_and_rejects_other_files(tmp_path):
    path = tmp_path / "database.db"
    _database(path, "a.jpg")
    assert read_image_ids(path) == {"a.jpg": 1} and _side_files(path) == []
    not_a_database = tmp_path / "notes.db"
    shutil.copy(__file__, not_a_database)
    with pytest.raises(D2sfmError, match=r"notes.db: not a COLMAP database \(file is not a database\)"):
        read_image_ids(not_a_database)


def test_a_database_is_copied_with_the_writes_still_in_its_log(tmp_path):
    """The refinement copies the database before changing it: a byte copy of the main file would drop what an
    open (or killed) COLMAP still holds in the -wal file."""
    path = tmp_path / "database.db"
    _database(path, "a.jpg")
    writer = sqlite3.connect(path)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO images (image_id, name, camera_id) VALUES (2, 'b.jpg', 1)")
    writer.commit()
    try:
        shutil.copyfile(path, tmp_path / "bytes.db")
        assert read_image_ids(tmp_path / "bytes.db") == {"a.jpg": 1}  # what a byte copy loses
        copy_database(path, tmp_path / "copy.db")
        assert read_image_ids(tmp_path / "copy.db") == {"a.jpg": 1, "b.jpg": 2}
    finally:
        writer.close()
