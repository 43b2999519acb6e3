"""Check, before any long work, that an output path can be written.

A fit or an ingest that runs for minutes and only then finds that ``--out`` lies under a file,
on a read-only disk or in a folder without write permission wastes the user's time and ends in
a traceback. The probe here creates and removes a scratch folder where the output will be made, so
permission bits, read-only mounts and pseudo-filesystems all answer the way a real write would.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from recon4d.errors import WRITE_REFUSED_ERRNOS, UserError


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (or ``path`` itself) that is not a folder."""
    for candidate in reversed([path, *path.parents]):
        if candidate.exists() and not candidate.is_dir():
            return candidate
    return None


def require_writable_output(path: str | os.PathLike, option: str = "--out",
                            is_file: bool = False) -> None:
    """Raise a one-line UserError unless ``path`` can be created.

    Args:
        path: the output folder (or, with ``is_file``, the output file) a command will write.
        option: the command-line option that named it, quoted in the message.
        is_file: ``path`` is a file: only its folder has to be a folder.
    Nothing is left behind: the probe folder is made in the nearest existing folder on the way
    to ``path`` (``path`` itself when it is an existing folder: a resumed fit, --overwrite) and
    removed at once.
    """
    path = Path(path)
    blocker = _blocking_file(path.parent if is_file else path)
    if blocker is not None:
        raise UserError(f"{option} '{path}' cannot be created: '{blocker}' is a file, not a "
                        f"folder: choose another {option}")
    where = path if not is_file and path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".recon4d-write-probe-", dir=where))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in WRITE_REFUSED_ERRNOS:
            fix = f"choose a {option} folder you can write to"
        else:
            fix = f"choose another {option}"
        raise UserError(f"{option} '{path}' cannot be written ({reason}): {fix}") from exc
