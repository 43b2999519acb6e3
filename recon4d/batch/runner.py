"""The batch driver: skip finished jobs, run the rest on an executor, retry, keep the summary.

The driver is the only writer of summary.json/summary.csv and holds ``OUT/batch.lock`` while it
runs, so two batches never share an output folder. It keeps at most ``executor.capacity``
attempts in flight, and as each attempt ends it either schedules a retry or records the job's
final status and rewrites the summary. A bad input (``error_kind == "user"``) or a timeout is
not retried: the same input would fail the same way; exceptions and crashed workers are.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Callable

from recon4d.batch.jobs import Summary, finished_state
from recon4d.batch.manifest import JobSpec, RunDirResolver
from recon4d.batch.worker import job_reference
from recon4d.errors import UserError
from recon4d.utils.console import info

NOT_RETRIED = ("user", "timeout")


def _lock_out_dir(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    handle = open(out / "batch.lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"another 'recon4d batch' is already writing to '{out}': wait for it to "
                        "finish or choose another --out") from None
    return handle


def make_executor(kind: str, out: Path, job_ref: str, python_path: list[str], *, workers: int,
                  cpus_per_job: float, gpus_per_job: float, timeout: float | None,
                  address: str | None):
    if kind == "local":
        if address:
            raise UserError("--address is for --executor ray: drop it or add --executor ray")
        from recon4d.batch.local import LocalExecutor

        return LocalExecutor(str(out), job_ref, python_path, workers=workers,
                             cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, timeout=timeout)
    if kind == "ray":
        from recon4d.batch.ray_executor import RayExecutor

        return RayExecutor(str(out), job_ref, python_path, address=address, workers=workers,
                           cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job, timeout=timeout)
    raise UserError(f"unknown executor '{kind}': use local or ray")


def run_batch(specs: list[JobSpec], out_dir: str | Path, *, executor: str = "local",
              job: str | Callable | None = None, retries: int = 1, timeout: float | None = None,
              workers: int = 0, cpus_per_job: float = 1, gpus_per_job: float = 0,
              address: str | None = None, manifest: str | None = None) -> dict:
    """Run every job of a batch that is not finished yet, and return the final summary.

    Args:
        specs: jobs from :func:`recon4d.batch.manifest.load_manifest` (run dirs inside out_dir).
        out_dir: the batch folder (see :mod:`recon4d.batch.jobs` for its layout).
        executor: "local" (worker processes here) or "ray" (Ray tasks).
        job: the job function, a ``module:function`` string or a module-level function
            ``fn(input_path, run_dir, overrides) -> {"metrics": dict, "outputs": [paths]}``;
            default :func:`recon4d.pipeline.run_job` (fit + export + eval).
        retries: extra attempts for a job that crashed or raised (not for bad inputs/timeouts).
        timeout: seconds per attempt; None or 0 for no limit.
        workers, cpus_per_job, gpus_per_job, address: executor resources (see the executors).
        manifest: the manifest path, recorded in the summary.

    Returns:
        The summary as written to ``out_dir/summary.json``.
    """
    if retries < 0:
        raise UserError(f"--retries must be 0 or more, got {retries}")
    if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
        raise UserError(f"--timeout must be positive seconds, got {timeout}")
    if not (math.isfinite(cpus_per_job) and math.isfinite(gpus_per_job)) or cpus_per_job <= 0 \
            or gpus_per_job < 0:
        raise UserError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0, got {cpus_per_job} "
                        f"and {gpus_per_job}")
    if workers < 0:
        raise UserError(f"--workers must be 0 (as many as the resources allow) or more, got "
                        f"{workers}")
    out = Path(out_dir).expanduser().absolute()
    resolver = RunDirResolver(out)
    for spec in specs:
        if Path(spec.run_dir) != resolver(spec.name):
            raise UserError(f"job '{spec.name}' has run dir {spec.run_dir}, not {resolver(spec.name)}: "
                            "build jobs with load_manifest(manifest, out) for this --out")
    job_ref, python_path = job_reference(job)
    lock = _lock_out_dir(out)
    try:
        summary = Summary(out, specs, {"out": str(out), "manifest": manifest, "executor": executor,
                                       "job": job_ref, "retries": retries, "timeout": timeout})
        todo: deque[tuple[JobSpec, int]] = deque()
        for spec in specs:
            state = finished_state(out, spec)
            if state is not None:
                summary.update(spec.name, status="skipped", attempts=0, seconds=state.get("seconds"),
                               metrics=state.get("metrics") or {})
            else:
                todo.append((spec, 1))
        summary.write()
        skipped = len(specs) - len(todo)
        info(f"batch: {len(specs)} jobs, {skipped} already finished, {len(todo)} to run "
             f"({executor} executor); summary: {summary.csv_path}")
        if todo:
            runner = make_executor(executor, out, job_ref, python_path, workers=workers,
                                   cpus_per_job=cpus_per_job, gpus_per_job=gpus_per_job,
                                   timeout=timeout or None, address=address)
            inflight: dict = {}
            try:
                _drive(runner, todo, summary, retries, inflight)
            except BaseException:  # Ctrl-C or a driver bug: stop the jobs, keep the summary true
                info("batch: interrupted; stopping the running jobs (run the same command to resume)")
                runner.abort(list(inflight))
                for name, row in summary.rows.items():
                    if row["status"] == "running":
                        summary.update(name, status="pending")
                summary.write()
                raise
            finally:
                runner.close()
        counts = summary.counts()
        info(f"batch: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
             f"summary: {summary.csv_path}")
        return {"counts": counts, "jobs": list(summary.rows.values()),
                "summary_json": str(summary.json_path), "summary_csv": str(summary.csv_path)}
    finally:
        lock.close()


def _drive(runner, todo: deque, summary: Summary, retries: int, inflight: dict) -> None:
    """Keep up to ``runner.capacity`` attempts in flight until every job has a final status.

    ``inflight`` maps executor handles to ``(spec, attempt)``; the caller owns it so that it can
    abort what is still running when this is interrupted.
    """
    total = len(todo)
    finished = 0
    while todo or inflight:
        while todo and len(inflight) < runner.capacity:
            spec, attempt = todo.popleft()
            inflight[runner.submit(spec.to_dict(), attempt)] = (spec, attempt)
            summary.update(spec.name, status="running", attempts=attempt)
        summary.maybe_write()
        for handle in runner.wait_any(list(inflight), timeout=summary.flush_due()):
            spec, attempt = inflight.pop(handle)
            outcome = runner.result(handle)
            status = outcome.get("status", "failed")
            if status == "failed" and outcome.get("error_kind") not in NOT_RETRIED \
                    and attempt <= retries:
                info(f"batch: {spec.name} attempt {attempt} failed ({outcome.get('error')}); retrying")
                todo.append((spec, attempt + 1))
                summary.update(spec.name, status="pending", error=outcome.get("error"),
                               error_kind=outcome.get("error_kind"))
                continue
            finished += 1
            summary.update(spec.name, status=status, attempts=attempt,
                           seconds=outcome.get("seconds"),
                           error=outcome.get("error"), error_kind=outcome.get("error_kind"),
                           metrics=outcome.get("metrics") or {}, host=outcome.get("host"))
            line = f"batch [{finished}/{total}] {spec.name}: {status}"
            if status == "failed":
                line += f" ({outcome.get('error_kind')}: {outcome.get('error')})"
            info(line)
        summary.maybe_write()
    summary.write()
