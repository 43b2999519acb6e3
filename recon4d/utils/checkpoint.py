"""Checkpoints: tensors and JSON-able values, saved atomically, loaded without pickle.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts of those, written with
``torch.save`` to a temporary file and renamed; ``latest.json`` beside it names the newest
complete checkpoint, so a run killed mid-write resumes from the previous one. Loading uses
``torch.load(weights_only=True)``, which refuses arbitrary pickled objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recon4d.errors import UserError
from recon4d.utils.atomic import atomic_path, atomic_write_json, read_json

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
    steps = sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_NAME.match(p.name)))
    for old in steps[:-keep] if keep > 0 else []:
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
