"""Atomic file and directory writes: write to a temporary sibling, then rename.

A reader never sees a half-written file, and a killed process leaves at most a ``.tmp-*`` sibling
that the next write ignores. Renames are atomic on POSIX within one filesystem, which is why the
temporary always lives in the destination's own folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

TEMP_PREFIX = ".tmp-"
"""Name prefix of the temporary siblings (``.tmp-<name>-<random>``): a killed write leaves one."""


def _fsync_path(path: Path) -> None:
    """fsync a file's data or a directory's entries by name; silently skipped where the
    platform or file system refuses (the write itself already succeeded)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (files first, then their folders), so that
    a renamed directory cannot name files whose data never reached the disk."""
    for folder, _subfolders, files in os.walk(root, topdown=False):
        for name in files:
            _fsync_path(Path(folder) / name)
        _fsync_path(Path(folder))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    For writers that want a file name (video encoders, ``torch.save``, GLB writers). The
    temporary keeps ``path``'s suffix (or ``suffix``) so format sniffing by extension works.
    On an exception the temporary is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.stem}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # The writer closed its file; its data reach the disk before the name does, so a
        # power cut cannot leave ``path`` naming an empty file (a checkpoint that latest.json,
        # fsynced itself, points to).
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically. NaN/Inf are refused: they are not valid JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; the caller validates the structure."""
    with open(path, "r", encoding="utf-8") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success it becomes ``path``.

    On an exception the temporary directory is deleted, so nothing half-written is left. With
    ``overwrite`` an existing ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    if path.parent.exists() and not path.parent.is_dir():
        # mkdir would say FileExistsError, which callers read as "the output exists".
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path.parent))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{path.name}-", dir=path.parent))
    try:
        yield tmp
        # Without this a power cut after the rename could leave ``path`` naming a complete
        # set of files some of which are empty (a dataset the fit then refuses).
        _fsync_tree(tmp)
        if path.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".old-{path.name}-", dir=path.parent))
            os.replace(path, trash / "old")
            os.replace(tmp, path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and flush it to disk.

    Appends are not renames: a killed writer can leave a truncated last line, which
    :func:`read_jsonl` skips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, skipping a truncated final line left by a killed writer."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    with open(path, "r", encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
