"""``recon4d scenes list|make NAME --out DIR``: the synthetic scenes with ground truth."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class Config:
    """List the scene definitions, or generate one synthetic scene with exact ground truth.

    `recon4d scenes list` prints every scene (synthetic ones and entries pointing at user clips).
    `recon4d scenes make NAME --out DIR` writes a dataset directory that `recon4d fit` reads
    directly, plus ground truth in DIR/gt (per-frame meshes, depth, normals, held-out cameras).
    """

    action: tyro.conf.Positional[Literal["list", "make"]]
    """list: print the scenes; make: generate scene NAME into --out."""

    name: tyro.conf.Positional[Optional[str]] = None
    """Scene name (for make), e.g. default, creature, blob, orbit, rigid."""

    out: Optional[Path] = None
    """Output dataset directory (for make); must not exist unless --overwrite."""

    seed: int = 0
    """Random seed of texture and motion; the same seed gives the same scene."""

    resolution: Optional[int] = None
    """Image side in pixels (default: the scene definition's)."""

    frames: Optional[int] = None
    """Number of frames (default: the scene definition's)."""

    overwrite: bool = False
    """Replace --out if it exists (only after the new scene is complete)."""

    json: bool = False
    """list: print JSON instead of a table."""


def run(config: Config) -> int:
    from recon4d.errors import UserError

    if config.action == "list":
        import json

        from recon4d.scenes import list_scenes

        rows = list_scenes()
        if config.json:
            print(json.dumps(rows, indent=2))
            return 0
        width = max(len(r["name"]) for r in rows)
        for r in rows:
            if r["kind"] == "clip":
                where = r["path"] + ("" if r["exists"] else "  (missing)")
                print(f"{r['name']:<{width}}  clip       {where}")
            else:
                print(f"{r['name']:<{width}}  synthetic  {r['resolution']}px {r['frames']} frames, "
                      f"{r['camera']} camera: {r['description']}")
        return 0
    if not config.name:
        raise UserError("'recon4d scenes make' needs a scene NAME: run 'recon4d scenes list' for the names")
    if config.out is None:
        raise UserError("'recon4d scenes make' needs --out DIR: the folder to write the scene to")
    from recon4d.scenes import make_scene
    from recon4d.utils.output_location import require_writable_output

    if config.seed < 0:
        raise UserError(f"--seed must be 0 or more, got {config.seed}")
    require_writable_output(config.out)
    path = make_scene(config.name, config.out, seed=config.seed, overwrite=config.overwrite,
                      resolution=config.resolution, frames=config.frames)
    print(path)
    return 0
