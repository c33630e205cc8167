"""Atomic file writes: write beside the target under a temporary name, then rename over it.

A rename within one folder is atomic on POSIX and Windows, so a reader (or a resumed run) sees either the old
complete file or the new complete file, never a half-written one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

from d2sfm.errors import D2sfmError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on failure delete it. ``suffix``
    ends the temporary name, for writers that insist on a file extension."""
    path = Path(path)
    if path.is_dir():  # else the rename's error would name the temporary file
        raise D2sfmError(f"{path}: is a folder; give the path of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(temporary)
    try:
        yield temporary
        if temporary.exists():  # mkstemp creates 0600; give the file the permissions a plain open() would
            os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def scratch_folder(target: str | os.PathLike, suffix: str = ".part", fresh: bool = True) -> Path:
    """``target`` + ``suffix`` beside it: where a folder is written before ``replace_folder`` puts it in place,
    emptied first unless ``fresh`` is False (a stage that resumes inside it, as dense MVS does)."""
    target = Path(target)
    scratch = target.with_name(target.name + suffix)
    if fresh:
        shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def replace_folder(complete: str | os.PathLike, target: str | os.PathLike, backup_suffix: str = ".old") -> None:
    """Put the ``complete`` folder in ``target``'s place: the old target is renamed aside (``backup_suffix``)
    first and deleted last, so that at every moment a complete folder exists under one of the names;
    ``recover_folder`` repairs a stop between the renames. The one folder swap of every stage that writes a
    folder (models, triangulations, dense workspaces, refined models, the synthetic truth)."""
    complete, target = Path(complete), Path(target)
    backup = target.with_name(target.name + backup_suffix)
    shutil.rmtree(backup, ignore_errors=True)
    if target.exists():
        target.rename(backup)
    os.replace(complete, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover_folder(target: str | os.PathLike, scratch_suffix: str = ".part", backup_suffix: str = ".old") -> None:
    """Undo what a stop inside ``replace_folder`` left: ``target`` is the new folder if the swap finished, else
    the old one again; an unfinished scratch folder is deleted."""
    target = Path(target)
    shutil.rmtree(target.with_name(target.name + scratch_suffix), ignore_errors=True)
    backup = target.with_name(target.name + backup_suffix)
    if backup.is_dir():
        if target.is_dir():
            shutil.rmtree(backup)
        else:
            backup.rename(target)


SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # a SQLite file's write-ahead log, its index, its rollback journal


def remove_sqlite_side_files(path: str | os.PathLike) -> None:
    for suffix in SQLITE_SIDE_FILES:
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def copy_database(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a SQLite database through SQLite (its backup API), so that writes still in the source's -wal file are
    copied too; a byte copy of the main file would lose them."""
    uri = f"{Path(source).resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as reader, \
            contextlib.closing(sqlite3.connect(target)) as writer:
        reader.backup(writer)


@contextlib.contextmanager
def atomic_database(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_path`` for a SQLite database (COLMAP's runs in WAL mode). The side files a process killed with the
    old database open leaves behind belong to the old file: SQLite would read them against the new one and call
    it malformed, so they go just before the new file takes its place."""
    with atomic_path(path) as scratch:
        try:
            yield scratch
        except (RuntimeError, sqlite3.Error) as error:
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            if any(words in problem.lower() for words in SQLITE_WRITE_FAILURES):
                raise D2sfmError(f"{path}: cannot write the database ({problem}); check the free disk space and the "
                                 "folder's permissions, then rerun the same command: finished work is saved") from None
            raise
        finally:
            remove_sqlite_side_files(scratch)  # its own log and index, whether it is renamed into place or not
        remove_sqlite_side_files(path)


# What SQLite (directly, or through pycolmap's RuntimeError) says when the disk is full or refuses a write
# (COLMAP says only "No registered database factory succeeded" when SQLite cannot create or open the file)
SQLITE_WRITE_FAILURES = ("disk is full", "disk i/o error", "file too large", "readonly database", "unable to open",
                         "no registered database factory")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once, at import: os.umask has no read-only form


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


_UTF8_BOM = b"\xef\xbb\xbf"


def read_text_file(path: str | os.PathLike, what: str) -> str:
    """The text of an input file the user gives (``what``: "pair list", "image list", "pose file", ...), read as
    UTF-8 (a leading byte-order mark is skipped) with any line ending read as '\\n', as ``Path.read_text`` does. A
    file that is missing, a folder or not UTF-8 is a one-line error naming it instead of a traceback."""

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise D2sfmError(f"{path}: no such {what}; check the path") from None
    except IsADirectoryError:
        raise D2sfmError(f"{path}: is a folder, not a {what}; give the file's path") from None
    skipped = len(_UTF8_BOM) if data.startswith(_UTF8_BOM) else 0
    try:
        text = data[skipped:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = skipped + error.start
        raise D2sfmError(f"{path}: {what} is not UTF-8 text (byte 0x{data[offset]:02x} at offset {offset}); save it "
                         "as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")
