"""Batch manifests: one row per input, CSV or JSON lines, with optional per-job overrides.

CSV (a header row is required; ``input`` is the only required column)::

    input,name,preset,resolution,formats
    clips/dolphin.mp4,,cpu-fast,256,glb-skin;video
    clips/robot.mp4,robot_hq,gpu-quality,,

JSON lines (one object per line; blank lines and lines starting with ``#`` are skipped)::

    {"input": "clips/dolphin.mp4", "preset": "cpu-fast", "resolution": 256, "formats": ["glb-skin"]}

Columns / keys:

- ``input``: video, GIF, frame folder, transforms.json or dataset dir. Relative paths are relative
  to the manifest's own folder, so a manifest travels with its clips.
- ``name``: the job's name and run-dir name (default: the input's file stem). Any name is turned
  into one safe path component, so a run dir is always ``OUT/jobs/<name>``, strictly inside OUT.
- ``preset``, ``resolution`` (longest image side in pixels), ``formats`` (export formats,
  separated by ``;``, ``|`` or spaces in CSV, a list in JSONL), ``gt`` (ground-truth folder for
  evaluation), ``depth`` (depth maps for the clip, as ``recon4d ingest --depth``; relative to the
  manifest's folder), ``depth_kind`` (``disparity`` or ``depth``) and ``time_budget`` (minutes
  the fit may take, as ``recon4d fit --time-budget``): per-job overrides of the batch-wide
  defaults.

Other columns are ignored with a warning (a manifest may carry notes such as the prompt). A
malformed row is a :class:`~recon4d.errors.UserError` naming the line: the batch stops before any
job runs rather than after hours of compute.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from recon4d.data.options import DEPTH_KINDS
from recon4d.errors import UserError

OVERRIDE_KEYS = ("preset", "resolution", "formats", "gt", "depth", "depth_kind", "time_budget")
KNOWN_KEYS = ("input", "name") + OVERRIDE_KEYS
MAX_NAME_LENGTH = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class JobSpec:
    """One job of a batch: an input, its run directory and its overrides.

    Attributes:
        name: safe, unique job name (one path component).
        input: absolute path of the input (not checked here: a missing input fails its own job).
        run_dir: absolute run directory, ``OUT/jobs/<name>``.
        overrides: only the keys the row (or the batch defaults) set, from :data:`OVERRIDE_KEYS`.
        line: the manifest line the job came from (for messages).
    """

    name: str
    input: str
    run_dir: str
    overrides: dict = field(default_factory=dict)
    line: int = 0

    def fingerprint(self) -> str:
        """Hash of what determines the job's result (input path and overrides).

        A finished job is only skipped when its stored fingerprint matches, so editing a row's
        preset or formats re-runs that job.
        """
        payload = json.dumps({"input": self.input, "overrides": self.overrides}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "run_dir": self.run_dir,
                "overrides": dict(self.overrides), "line": self.line}

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        return cls(str(data["name"]), str(data["input"]), str(data["run_dir"]),
                   dict(data.get("overrides") or {}), int(data.get("line", 0)))


def safe_job_name(raw: str) -> str:
    """Turn any string into one safe path component (no separators, never '.' or '..').

    ``"../../etc/passwd"`` -> ``"etc_passwd"``, ``"/abs/clip.mp4"`` -> ``"abs_clip.mp4"``. Long
    names are cut and given a hash suffix so two long names stay distinct.
    """
    name = _UNSAFE.sub("_", str(raw).replace("\\", "/").replace("/", "_"))
    name = name.strip("._-")  # no hidden names, no '.'/'..', no option-like leading '-'
    if not name:
        name = "job"
    if len(name) > MAX_NAME_LENGTH:
        digest = hashlib.sha256(str(raw).encode("utf-8")).hexdigest()[:8]
        name = f"{name[:MAX_NAME_LENGTH - 9]}-{digest}"
    return name


def jobs_root(out_dir: str | Path) -> Path:
    """``OUT/jobs``: the parent of every run directory of a batch."""
    return Path(out_dir) / "jobs"


def resolve_run_dir(out_dir: str | Path, name: str) -> Path:
    """The run directory of job ``name``, checked to lie strictly inside ``out_dir``.

    ``name`` must already be safe (:func:`safe_job_name`); this is the second line of defence,
    also catching a run dir that is a symlink pointing elsewhere.
    """
    return RunDirResolver(out_dir)(name)


class RunDirResolver:
    """:func:`resolve_run_dir` for many names: resolves OUT and OUT/jobs once (10k-row manifests)."""

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir).resolve()
        self.root = jobs_root(self.out)
        self.root_resolved = self.root.resolve()
        if not self.root_resolved.is_relative_to(self.out):
            raise UserError(f"'{self.root}' is a link to outside '{self.out}': remove it")

    def __call__(self, name: str) -> Path:
        candidate = self.root / name
        bad = name != safe_job_name(name)
        if not bad and os.path.lexists(candidate):  # only an existing entry can be a symlink
            resolved = candidate.resolve()
            bad = resolved.parent != self.root_resolved
        if bad:
            raise UserError(f"job name '{name}' would write outside '{self.out}' (a '..' name or "
                            "a symlink in OUT/jobs): rename the job or remove the symlink")
        return candidate


def _parse_formats(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        items = [v for v in re.split(r"[;|\s]+", value) if v]
    elif isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        raise UserError(f"{where}: 'formats' must be a list or a ';'-separated string, got "
                        f"{value!r}: fix the manifest")
    bad = [v for v in items if not _TOKEN.match(v)]
    if bad or not items:
        raise UserError(f"{where}: bad export format(s) {bad or items!r}: use names such as "
                        "glb-skin;video")
    return items


def _parse_resolution(value: Any, where: str) -> int:
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not 8 <= number <= 16384:
        raise UserError(f"{where}: 'resolution' must be a whole number of pixels (longest side, "
                        f"8..16384), got {value!r}: fix the manifest")
    return number


def _parse_minutes(value: Any, where: str) -> float:
    try:
        number = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise UserError(f"{where}: 'time_budget' must be a positive number of minutes, got "
                        f"{value!r}: fix the manifest")
    return number


def normalize_overrides(raw: dict, where: str, base_dir: Path | None = None) -> dict:
    """Validate override values (strings from CSV or JSON values) into a clean dict.

    Empty values mean "not set" and are dropped, so a CSV may leave cells blank.
    """
    out: dict[str, Any] = {}
    for key in OVERRIDE_KEYS:
        value = raw.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key == "preset":
            if not isinstance(value, str) or not _TOKEN.match(value.strip()):
                raise UserError(f"{where}: bad preset {value!r}: use a preset name such as cpu-fast")
            out[key] = value.strip()
        elif key == "resolution":
            out[key] = _parse_resolution(value, where)
        elif key == "formats":
            out[key] = _parse_formats(value, where)
        elif key == "time_budget":
            out[key] = _parse_minutes(value, where)
        elif key == "depth_kind":
            if str(value).strip() not in DEPTH_KINDS:
                raise UserError(f"{where}: bad depth_kind {value!r}: use disparity or depth")
            out[key] = str(value).strip()
        elif key in ("gt", "depth"):
            path = Path(str(value).strip()).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            out[key] = str(path.absolute())
    return out


def _read_rows(path: Path) -> Iterable[tuple[int, dict]]:
    """(line number, raw row dict) for each row of a CSV or JSONL manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate the BOM spreadsheets write
    except UnicodeDecodeError as exc:
        raise UserError(f"manifest '{path}' is not UTF-8 text: save it as UTF-8 CSV or JSONL") from exc
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}): write one JSON "
                                "object per line") from exc
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object like "
                                '{"input": "clip.mp4"}, got ' + type(row).__name__)
            yield number, row
        return
    if suffix not in (".csv", ".tsv", ".txt"):
        raise UserError(f"manifest '{path}' must end in .csv or .jsonl: rename it")
    lines = text.splitlines()
    delimiter = "\t" if suffix == ".tsv" else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    if not reader.fieldnames or "input" not in [f.strip() for f in reader.fieldnames]:
        raise UserError(f"manifest '{path}' has no 'input' column in its header row: start it "
                        "with a line such as 'input,preset'")
    for row in reader:
        clean = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
        if None in row:  # more cells than header names
            raise UserError(f"{path}:{reader.line_num}: more cells than columns in the header: "
                            "quote values that contain commas")
        if not any(isinstance(v, str) and v for v in clean.values()):
            continue
        yield reader.line_num, clean


def load_manifest(path: str | Path, out_dir: str | Path, defaults: dict | None = None) -> list[JobSpec]:
    """Parse a manifest into job specs with safe, unique run directories under ``out_dir``.

    Args:
        path: the CSV or JSONL manifest.
        out_dir: the batch output folder; run dirs are ``out_dir/jobs/<name>``.
        defaults: batch-wide overrides (same keys as a row); a row's own values win.

    Returns:
        Jobs in manifest order.

    Raises:
        UserError: unreadable manifest, malformed row, duplicate explicit names, or no rows.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"manifest '{path}' does not exist: pass a .csv or .jsonl file")
    base = path.resolve().parent
    out = Path(out_dir).expanduser().absolute()
    default_overrides = normalize_overrides(defaults or {}, "batch defaults", Path.cwd())

    rows = []
    ignored: set[str] = set()
    for number, raw in _read_rows(path):
        where = f"{path.name}:{number}"
        ignored |= {k for k in raw if k not in KNOWN_KEYS}
        source = raw.get("input")
        if not isinstance(source, str) or not source.strip():
            raise UserError(f"{where}: row has no 'input': give the path of a video, GIF or frame "
                            "folder")
        input_path = Path(source.strip()).expanduser()
        if not input_path.is_absolute():
            input_path = base / input_path
        input_path = Path(_normpath(input_path))
        overrides = dict(default_overrides)
        overrides.update(normalize_overrides(raw, where, base))
        explicit = raw.get("name")
        explicit = str(explicit).strip() if explicit not in (None, "") else None
        rows.append((number, str(input_path), overrides, explicit))
    if not rows:
        raise UserError(f"manifest '{path}' lists no inputs: add one row per video")
    if ignored:
        from recon4d.utils.console import warn

        warn(f"manifest columns ignored (not one of {', '.join(KNOWN_KEYS)}): "
             f"{', '.join(sorted(ignored))}")
    names = _assign_names(rows, path)
    resolver = RunDirResolver(out)
    return [JobSpec(name, input_path, str(resolver(name)), overrides, number)
            for name, (number, input_path, overrides, _) in zip(names, rows)]


def _normpath(path: Path) -> str:
    return os.path.normpath(str(path))


def _assign_names(rows: list[tuple[int, str, dict, str | None]], path: Path) -> list[str]:
    """Unique safe names: explicit names must not collide; derived ones get a hash suffix.

    The suffix hashes the input path and overrides (not the row number), so a job keeps its name
    (and its finished run) when rows are added or reordered.
    """
    names: list[str] = []
    seen_explicit: dict[str, int] = {}
    for number, input_path, overrides, explicit in rows:
        if explicit is not None:
            name = safe_job_name(explicit)
            if name.lower() in seen_explicit:
                raise UserError(f"{path.name}:{number}: job name '{name}' is already used on line "
                                f"{seen_explicit[name.lower()]}: give each row its own name")
            seen_explicit[name.lower()] = number
        else:
            name = safe_job_name(Path(input_path).stem if Path(input_path).suffix else
                                 Path(input_path).name)
        names.append(name)
    # Case-insensitive, because run dirs may land on case-insensitive shared storage.
    counts: dict[str, int] = {}
    for name in names:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    final: list[str] = []
    taken: dict[str, int] = {}
    for (number, input_path, overrides, explicit), name in zip(rows, names):
        if explicit is None and counts[name.lower()] > 1:
            key = json.dumps({"input": input_path, "overrides": overrides}, sort_keys=True)
            name = f"{name[:MAX_NAME_LENGTH - 9]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        if name.lower() in taken:
            raise UserError(f"{path.name}:{number}: repeats line {taken[name.lower()]} (same input, "
                            "same overrides, same name): remove the duplicate or give it a name")
        taken[name.lower()] = number
        final.append(name)
    return final
