"""Job bookkeeping of a batch: the output layout, job state, idempotence and the summary.

::

    OUT/
      summary.json        every job: status, attempts, seconds, metrics, error (rewritten
      summary.csv         atomically each time a job finishes; metrics as metrics.<key> columns)
      jobs/<name>/        the job's run directory (the same layout as 'recon4d fit --out')
      logs/<name>.log     everything the job printed, all attempts, with a header per attempt
      state/<name>.json   the job's state: running / done / failed, fingerprint, outputs, metrics
      .locks/<name>.lock  held by the process running the job (a second one waits)
      batch.lock          held by the batch driver (a second batch on the same OUT is refused)

A job is *finished* when its state says ``done``, its fingerprint (input path + overrides)
matches the manifest row, and every output it recorded (checkpoint, exports, metrics.json) is
still there with the recorded size. Finished jobs are skipped; anything else runs again, and the
pipeline resumes from the run's latest checkpoint when there is one.

Statuses in the summary: ``pending`` (not run yet), ``running``, ``done`` (finished in this run),
``skipped`` (finished by an earlier run, outputs verified), ``failed`` (with ``error`` and
``error_kind``: ``user`` for a bad input, ``timeout``, ``crash`` for a killed or crashed worker,
``error`` for an exception in the pipeline).
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from pathlib import Path
from typing import Any

from recon4d.batch.manifest import JobSpec
from recon4d.utils.atomic import atomic_write_json, atomic_write_text, read_json

STATE_SCHEMA_VERSION = 1
SUMMARY_SCHEMA_VERSION = 1
FINAL_STATUSES = ("done", "skipped", "failed")
CSV_COLUMNS = ("name", "status", "attempts", "seconds", "error_kind", "error", "input", "run_dir",
               "log", "preset", "resolution", "formats")


def state_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "state" / f"{name}.json"


def log_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / "logs" / f"{name}.log"


def lock_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / ".locks" / f"{name}.lock"


def read_state(out_dir: str | Path, name: str) -> dict | None:
    """The job's state record, or None when absent or unreadable (treated as never run)."""
    path = state_path(out_dir, name)
    if not path.is_file():
        return None
    try:
        state = read_json(path)
    except (ValueError, OSError):
        return None
    if not isinstance(state, dict) or state.get("schema_version") != STATE_SCHEMA_VERSION:
        return None
    return state


def write_state(out_dir: str | Path, name: str, record: dict) -> Path:
    record = {"schema_version": STATE_SCHEMA_VERSION, "name": name, **clean_json(record)}
    return atomic_write_json(state_path(out_dir, name), record)


def output_sizes(run_dir: str | Path, outputs: list) -> dict[str, int]:
    """``{path relative to run_dir: size in bytes}`` for a job's outputs.

    Raises:
        ValueError: an output is missing or lies outside the run directory.
    """
    root = Path(run_dir).resolve()
    sizes: dict[str, int] = {}
    for item in outputs:
        path = Path(item)
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"output '{item}' is outside the run directory {root}")
        if not path.exists():
            raise ValueError(f"output '{item}' does not exist")
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        for file in files:
            sizes[str(file.relative_to(root))] = file.stat().st_size
    return sizes


def finished_state(out_dir: str | Path, spec: JobSpec) -> dict | None:
    """The state of ``spec`` if it finished with the same fingerprint and intact outputs, else None."""
    state = read_state(out_dir, spec.name)
    if not state or state.get("status") != "done" or state.get("fingerprint") != spec.fingerprint():
        return None
    outputs = state.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return None
    root = Path(spec.run_dir)
    for rel, size in outputs.items():
        path = root / rel
        try:
            if not path.is_file() or path.stat().st_size != int(size):
                return None
        except (OSError, TypeError, ValueError):
            return None
    return state


def clean_json(value: Any) -> Any:
    """JSON-safe copy: NaN/Inf become None (strict JSON has neither), numpy scalars become floats."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return clean_json(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def flatten_metrics(metrics: dict, prefix: str = "metrics.") -> dict[str, Any]:
    """Nested metrics as flat ``metrics.a.b`` scalar columns (lists are left out of the CSV)."""
    flat: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            flat[name] = value
    return flat


class Summary:
    """The batch summary (JSON and CSV), kept by the driver and rewritten atomically on changes.

    Only the driver process writes it, so no locking is needed; a reader always sees a complete
    file, and a killed driver leaves the last complete version. Rewriting N rows on each of N
    job events is quadratic, so big batches rewrite at most every :attr:`min_interval` seconds
    (0 up to 200 jobs, then 2 ms per job, at most 30 s); :meth:`flush_due` says when.
    """

    def __init__(self, out_dir: str | Path, specs: list[JobSpec], info: dict | None = None):
        self.out = Path(out_dir)
        self.info = dict(info or {})
        self.started = time.time()
        self.min_interval = 0.0 if len(specs) <= 200 else min(30.0, 0.002 * len(specs))
        self.dirty = True
        self.last_write = float("-inf")
        self.rows: dict[str, dict] = {}
        for spec in specs:
            self.rows[spec.name] = {
                "name": spec.name, "input": spec.input, "run_dir": spec.run_dir,
                "log": str(log_path(self.out, spec.name)), "overrides": dict(spec.overrides),
                "status": "pending", "attempts": 0, "seconds": None, "error": None,
                "error_kind": None, "host": None, "metrics": {},
            }

    @property
    def json_path(self) -> Path:
        return self.out / "summary.json"

    @property
    def csv_path(self) -> Path:
        return self.out / "summary.csv"

    def update(self, name: str, **fields: Any) -> None:
        self.rows[name].update(clean_json(fields))
        self.dirty = True

    def flush_due(self) -> float | None:
        """Seconds until a pending change must be written (0: now), or None when nothing is pending."""
        if not self.dirty:
            return None
        return max(0.0, self.last_write + self.min_interval - time.monotonic())

    def maybe_write(self) -> None:
        """Write if something changed and the last write is at least ``min_interval`` old."""
        if self.flush_due() == 0.0:
            self.write()

    def counts(self) -> dict[str, int]:
        counts = {s: 0 for s in ("pending", "running", "done", "skipped", "failed")}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        return counts

    def write(self) -> None:
        payload = {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            **self.info,
            "started_at": _iso(self.started),
            "updated_at": _iso(time.time()),
            "counts": self.counts(),
            "jobs": list(self.rows.values()),
        }
        atomic_write_json(self.json_path, clean_json(payload))
        atomic_write_text(self.csv_path, self.to_csv())
        self.dirty = False
        self.last_write = time.monotonic()

    def to_csv(self) -> str:
        flat_rows = []
        metric_columns: list[str] = []
        for row in self.rows.values():
            flat = {key: row.get(key) for key in CSV_COLUMNS if key in row}
            for key in ("preset", "resolution", "formats"):
                value = row["overrides"].get(key)
                flat[key] = ";".join(value) if isinstance(value, list) else value
            metrics = flatten_metrics(row.get("metrics") or {})
            for column in metrics:
                if column not in metric_columns:
                    metric_columns.append(column)
            flat.update(metrics)
            flat_rows.append(flat)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS) + metric_columns,
                                extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for flat in flat_rows:
            writer.writerow({k: ("" if v is None else v) for k, v in flat.items()})
        return buffer.getvalue()


def _iso(stamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def now_iso() -> str:
    return _iso(time.time())


def host_name() -> str:
    return os.uname().nodename
