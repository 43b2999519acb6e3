"""What an export was made from: run, checkpoint step, settings, versions, time.

The same record goes into every GLB's ``asset.extras["recon4d"]`` and into
``export/provenance.json`` beside the files, so an asset can be traced back to its fit.
"""

from __future__ import annotations

import datetime
import platform
from pathlib import Path

from recon4d import __version__
from recon4d.rundir import to_jsonable
from recon4d.utils.atomic import atomic_write_json


def make_provenance(run_dir: str | Path | None, step: int | None, settings: dict,
                    extra: dict | None = None) -> dict:
    """A JSON-able provenance record.

    Args:
        run_dir: the run the scene came from (None for a scene built in memory).
        step: the checkpoint step of the fit (None if unknown).
        settings: the export options used.
        extra: anything else worth recording (e.g. measured skinning error).
    """
    record = {
        "generator": f"recon4d {__version__}",
        "run": str(Path(run_dir).resolve()) if run_dir is not None else None,
        "step": None if step is None else int(step),
        "settings": to_jsonable(settings),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
    }
    if extra:
        record.update(to_jsonable(extra))
    return record


def gltf_extras(record: dict) -> dict:
    """The ``extras`` object for a glTF asset."""
    return {"recon4d": record}


def write_provenance(path: str | Path, record: dict, files: dict | None = None) -> Path:
    """Write the record (plus the list of written files) as JSON atomically."""
    payload = dict(record)
    if files is not None:
        payload["files"] = to_jsonable(files)
    return atomic_write_json(path, payload)
