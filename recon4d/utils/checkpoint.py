"""Checkpoints: tensors and JSON-able values, saved atomically, loaded without pickle.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts of those, written with
``torch.save`` to a temporary file and renamed; ``latest.json`` beside it names the newest
complete checkpoint, so a run killed mid-write resumes from the previous one. Loading uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects. A resumed fit takes
the newest checkpoint that loads (:func:`load_newest_readable`): a damaged file (a bad disk
block, a copy cut short) costs the steps since the one before it, not the run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recon4d.errors import UserError
from recon4d.utils.atomic import TEMP_PREFIX, atomic_path, atomic_write_json, read_json

_STEP_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.pt"


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as ``folder/step_XXXXXXX.pt`` atomically, update latest.json, prune old.

    ``keep`` is how many of the newest checkpoints stay on disk.
    """
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic_write_json(folder / "latest.json", {"step": int(step), "file": path.name})
    steps = []
    for entry in folder.iterdir():
        if (m := _STEP_NAME.match(entry.name)):
            steps.append(int(m.group(1)))
        elif entry.name.startswith(f"{TEMP_PREFIX}step_"):
            # A write killed before its rename (SIGKILL, SIGTERM, power) leaves its temporary,
            # a checkpoint's size; one fit writes a run's checkpoints, so it is stale.
            entry.unlink(missing_ok=True)
    for old in sorted(steps)[:-keep] if keep > 0 else []:
        (folder / checkpoint_name(old)).unlink(missing_ok=True)
    return path


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest complete checkpoint in ``folder``, or None if there is none."""
    folder = Path(folder)
    pointer = folder / "latest.json"
    if pointer.is_file():
        try:
            candidate = folder / read_json(pointer)["file"]
            if candidate.is_file():
                return candidate
        except (ValueError, KeyError, TypeError):
            pass
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name)))
    return found[-1][1] if found else None


def checkpoints_newest_first(folder: str | Path) -> list[Path]:
    """Every checkpoint in ``folder``, the one latest.json names first, then by step, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    by_step = sorted(((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name))),
                     reverse=True)
    ordered = [p for _, p in by_step]
    latest = latest_checkpoint(folder)
    if latest is not None and latest in ordered:
        ordered.remove(latest)
        ordered.insert(0, latest)
    return ordered


def load_newest_readable(folder: str | Path, map_location: str = "cpu"
                         ) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint in ``folder`` that loads, or None if there is none.

    A damaged checkpoint is skipped with a warning naming it; when every one is damaged this
    raises a UserError (the run cannot be resumed).
    """
    from recon4d.utils import console

    candidates = checkpoints_newest_first(folder)
    for index, path in enumerate(candidates):
        try:
            return path, load_checkpoint(path, map_location=map_location)
        except UserError as exc:
            cause = exc.__cause__
            reason = type(cause).__name__ if cause is not None else "unreadable"
            after = (f"resuming from '{candidates[index + 1].name}' instead"
                     if index + 1 < len(candidates) else "no older checkpoint is left")
            console.warn(f"checkpoint '{path}' cannot be read ({reason}): {after}")
    if candidates:
        raise UserError(f"no checkpoint in '{folder}' can be read ({len(candidates)} damaged): fit "
                        "again into a new --out, without --resume")
    return None


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); a damaged file is a UserError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: run 'recon4d fit' first")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or unsafe files
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}): delete it to "
                        "resume from the previous one") from exc
