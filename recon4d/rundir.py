"""The run directory every command shares.

::

    RUN_DIR/
      config.json        {"schema_version", "kind", "recon4d_version", "config": {...}}
      dataset/           the ingested dataset (recon4d.data.dataset format)
      checkpoints/       step_000500.pt ..., latest.json naming the newest complete one
      logs/metrics.jsonl one JSON object per logged step (the viewer and plots read it)
      export/            meshes, GLBs, USD, splats (recon4d export)
      renders/           MP4s and images (recon4d render / export --format video)
      metrics.json       evaluation figures (recon4d eval), merged key by key

Every file is written atomically (:mod:`recon4d.utils.atomic`); configs are JSON with a schema
version and checkpoints load with ``torch.load(weights_only=True)``: no pickle, no YAML.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recon4d import __version__
from recon4d.errors import UserError
from recon4d.utils.atomic import append_jsonl, atomic_write_json, read_json, read_jsonl

CONFIG_SCHEMA_VERSION = 1


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and enums to plain JSON values (for config.json)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and hasattr(obj, "name") and not isinstance(obj, (int, float, str)):
        return obj.value
    return obj


class RunDir:
    """Paths and safe reads/writes for one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # Layout -------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics_log(self) -> Path:
        return self.logs / "metrics.jsonl"

    @property
    def export(self) -> Path:
        return self.root / "export"

    @property
    def renders(self) -> Path:
        return self.root / "renders"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def folders(self) -> tuple[Path, ...]:
        """The folders a run holds (``dataset`` is written whole by the fit, the rest by
        :meth:`create`)."""
        return (self.dataset, self.checkpoints, self.logs, self.export, self.renders)

    @property
    def entry_names(self) -> frozenset[str]:
        """The names a run folder holds; a folder with anything else in it is not a run."""
        return frozenset(path.name for path in (*self.folders, self.config_path, self.metrics_path))

    def check_folders(self) -> "RunDir":
        """Raise a UserError when one of the run's folders is a file (a damaged run)."""
        for folder in self.folders:
            if folder.exists() and not folder.is_dir():
                raise UserError(f"'{folder}' is a file, not a folder: the run is damaged; delete "
                                "it or choose another --out")
        return self

    def create(self) -> "RunDir":
        self.check_folders()
        for folder in (self.root, self.checkpoints, self.logs, self.export, self.renders):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def require(self) -> "RunDir":
        """Raise a UserError unless this looks like a run directory."""
        if not self.root.is_dir():
            raise UserError(f"run directory '{self.root}' does not exist: pass the --out folder of a "
                            "'recon4d fit' run")
        if not self.config_path.is_file():
            raise UserError(f"'{self.root}' is not a recon4d run (no config.json): pass the --out "
                            "folder of a 'recon4d fit' run")
        return self

    # Config -------------------------------------------------------------------------------
    def write_config(self, config: Any, kind: str = "fit", requested: dict | None = None) -> Path:
        """Write config.json. ``requested``: the settings the fit was started with, as given
        (before the dataset scaled them), which a --resume compares the settings given again
        with; None keeps those already recorded."""
        payload = {
            "schema_version": CONFIG_SCHEMA_VERSION,
            "kind": kind,
            "recon4d_version": __version__,
            "config": to_jsonable(config),
        }
        if requested is None:
            requested = self.read_requested()
        if requested is not None:
            payload["requested"] = to_jsonable(requested)
        return atomic_write_json(self.config_path, payload)

    def read_requested(self) -> dict | None:
        """The settings recorded as given when the fit started (None: not recorded, as in runs
        made before recon4d recorded them, or no readable config.json)."""
        try:
            payload = read_json(self.config_path)
        except (OSError, ValueError):
            return None
        requested = payload.get("requested") if isinstance(payload, dict) else None
        return requested if isinstance(requested, dict) else None

    def read_config(self) -> dict:
        """The ``config`` object of config.json, after checking the schema version."""
        self.require()
        try:
            payload = read_json(self.config_path)
        except ValueError as exc:
            raise UserError(f"{self.config_path} is not valid JSON ({exc}): delete the run and "
                            "fit again") from exc
        version = payload.get("schema_version") if isinstance(payload, dict) else None
        if version != CONFIG_SCHEMA_VERSION:
            raise UserError(f"{self.config_path} has schema_version {version!r}, this recon4d "
                            f"reads {CONFIG_SCHEMA_VERSION}: fit the run again with this version")
        config = payload.get("config")
        if not isinstance(config, dict):
            raise UserError(f"{self.config_path} has no 'config' object: fit the run again")
        return config

    # Metrics ------------------------------------------------------------------------------
    def log_metrics(self, record: dict) -> None:
        """Append one record (e.g. ``{"step": 10, "loss": 0.1, "psnr": 24.0}``) to the JSONL log."""
        append_jsonl(self.metrics_log, record)

    def read_metrics_log(self) -> list[dict]:
        return read_jsonl(self.metrics_log)

    def update_metrics(self, values: dict) -> Path:
        """Merge ``values`` into metrics.json (top-level keys replaced) atomically."""
        current = {}
        if self.metrics_path.is_file():
            try:
                current = read_json(self.metrics_path)
            except ValueError:
                current = {}
        current.update(to_jsonable(values))
        return atomic_write_json(self.metrics_path, current)

    def read_metrics(self) -> dict:
        return read_json(self.metrics_path) if self.metrics_path.is_file() else {}
