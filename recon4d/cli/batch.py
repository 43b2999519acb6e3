"""``recon4d batch``: reconstruct many inputs from a manifest, locally or on a Ray cluster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional, Tuple

import tyro


@dataclass
class Config:
    """Run fit + export + eval for every row of MANIFEST (CSV or JSONL, one input per row, optional
    per-row preset / resolution / formats), each job in its own run dir OUT/jobs/NAME, with logs
    in OUT/logs and a summary (status, time, metrics, error) in OUT/summary.csv and
    OUT/summary.json, updated as jobs finish. Finished jobs are skipped, so running the same
    command again resumes a stopped batch; a failing input is reported and never stops the
    others. Exit code: 0 when every job finished, 1 when some failed, 2 for a bad manifest.

    example: recon4d batch clips.csv --out runs/batch --workers 2
             recon4d batch clips.jsonl --out /shared/runs --executor ray --address auto --gpus-per-job 1
    """

    manifest: Annotated[tyro.conf.Positional[Path], tyro.conf.arg(metavar="MANIFEST")]
    """CSV with an 'input' column, or JSONL; inputs relative to the manifest's folder."""
    out: Path
    """Batch folder; every job writes strictly inside it, whatever its name."""
    executor: Literal["local", "ray"] = "local"
    """local: worker processes here; ray: Ray tasks (local Ray, or the cluster at --address)."""
    address: Optional[str] = None
    """Ray cluster address: auto, HOST:6379 or ray://HOST:10001 (default: start a local Ray)."""
    gpus_per_job: float = 0.0
    """GPUs per job (Ray num_gpus, fractions allowed; local: whole GPUs via CUDA_VISIBLE_DEVICES)."""
    cpus_per_job: float = 1.0
    """CPUs per job (Ray num_cpus; also the job's thread count)."""
    retries: int = 1
    """Extra attempts for a crashed or failed job (bad inputs and timeouts are not retried)."""
    timeout: Optional[float] = None
    """Seconds one attempt may run before it is killed and reported as a timeout."""
    workers: int = 0
    """Jobs at once; 0: local = CPU count / --cpus-per-job, ray = what the cluster fits."""
    preset: Optional[str] = None
    """Default fit preset for rows without one (cpu-fast, gpu-quality, ...)."""
    resolution: Optional[int] = None
    """Default ingest resolution (pixels) for rows without one."""
    formats: Optional[Tuple[str, ...]] = None
    """Default export formats for rows without any (default: glb-skin)."""
    time_budget: Optional[float] = None
    """Default minutes each fit may take (recon4d fit --time-budget) for rows without one."""
    job: str = "recon4d.pipeline:run_job"
    """Advanced: the job function, module:function(input, run_dir, overrides) -> dict."""
    dry_run: bool = False
    """Only list the jobs, their run dirs and whether they are already finished."""


def run(config: Config) -> int:
    from recon4d.batch.jobs import finished_state
    from recon4d.batch.manifest import load_manifest
    from recon4d.batch.runner import run_batch

    defaults = {"preset": config.preset, "resolution": config.resolution,
                "formats": list(config.formats) if config.formats else None,
                "time_budget": config.time_budget}
    specs = load_manifest(config.manifest, config.out, defaults)
    if config.dry_run:
        width = max(len(s.name) for s in specs)
        for spec in specs:
            state = "finished" if finished_state(config.out, spec) else "to run"
            extra = " ".join(f"{k}={v}" for k, v in spec.overrides.items())
            print(f"{spec.name:<{width}}  {state:<8}  {spec.run_dir}  {spec.input}  {extra}".rstrip())
        return 0
    from recon4d.utils.output_location import require_writable_output

    require_writable_output(config.out)  # the driver writes the batch state there
    result = run_batch(specs, config.out, executor=config.executor, job=config.job,
                       retries=config.retries, timeout=config.timeout, workers=config.workers,
                       cpus_per_job=config.cpus_per_job, gpus_per_job=config.gpus_per_job,
                       address=config.address, manifest=str(Path(config.manifest).absolute()))
    return 1 if result["counts"]["failed"] else 0
