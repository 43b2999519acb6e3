"""The local executor: jobs in worker processes on this machine.

A pool of ``workers`` threads each drives one job process at a time (:func:`run_attempt`), so at
most ``workers`` jobs run at once. Threads only wait on children; the work happens in the child
processes, which is also what makes per-job timeouts and crash isolation possible.

With ``gpus_per_job > 0`` the machine's GPUs are split into slots of that many devices and each
running job gets its own slot through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from recon4d.batch.worker import kill_group, run_attempt
from recon4d.errors import UserError


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU ")]


def thread_env(cpus_per_job: float) -> dict[str, str]:
    """Thread-count variables so N concurrent jobs do not each grab every core."""
    threads = str(max(1, int(cpus_per_job)))
    # torch, MKL and OpenBLAS size their thread pools from these at import.
    return {key: threads for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class LocalExecutor:
    """Run attempts in child processes, ``workers`` at a time.

    Args:
        out_dir: the batch folder.
        job_ref: ``module:function`` of the job.
        python_path: import roots for the job's module.
        workers: concurrent jobs; 0 picks ``cpu_count // cpus_per_job`` (and no more than the
            GPU slots when GPUs are requested).
        cpus_per_job: threads each job may use (sets OMP_NUM_THREADS and friends).
        gpus_per_job: whole GPUs per job; 0 leaves CUDA_VISIBLE_DEVICES alone.
        timeout: seconds per attempt, None for no limit.
    """

    name = "local"

    def __init__(self, out_dir: str, job_ref: str, python_path: list[str], workers: int = 0,
                 cpus_per_job: float = 1, gpus_per_job: float = 0, timeout: float | None = None):
        self.out_dir, self.job_ref, self.python_path = str(out_dir), job_ref, list(python_path)
        self.timeout = timeout
        self.env = thread_env(cpus_per_job)
        self.gpu_slots: queue.Queue | None = None
        if gpus_per_job and gpus_per_job > 0:
            if int(gpus_per_job) != gpus_per_job:
                raise UserError("--gpus-per-job must be a whole number with the local executor "
                                "(fractions need --executor ray)")
            gpus = visible_gpus()
            per = int(gpus_per_job)
            if len(gpus) < per:
                raise UserError(f"--gpus-per-job {per} but this machine shows {len(gpus)} GPU(s): "
                                "lower it, or use --executor ray on a GPU cluster")
            self.gpu_slots = queue.Queue()
            for start in range(0, len(gpus) - per + 1, per):
                self.gpu_slots.put(",".join(gpus[start:start + per]))
        auto = max(1, int((os.cpu_count() or 1) // max(cpus_per_job, 1)))
        self.workers = int(workers) if workers and workers > 0 else auto
        if self.gpu_slots is not None:
            self.workers = min(self.workers, self.gpu_slots.qsize())
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="recon4d-job")
        self.running: set = set()  # Popen of the attempts in flight, for abort()

    @property
    def capacity(self) -> int:
        """How many attempts to keep in flight."""
        return self.workers

    def submit(self, spec_dict: dict, attempt: int) -> Future:
        return self.pool.submit(self._attempt, spec_dict, attempt)

    def _attempt(self, spec_dict: dict, attempt: int) -> dict:
        env = dict(self.env)
        slot = self.gpu_slots.get() if self.gpu_slots is not None else None
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot
        try:
            return run_attempt(self.out_dir, spec_dict, self.job_ref, attempt, self.timeout,
                               self.python_path, env, running=self.running)
        finally:
            if slot is not None:
                self.gpu_slots.put(slot)

    def wait_any(self, handles: list[Future], timeout: float | None = None) -> list[Future]:
        """Attempts that ended; empty when ``timeout`` seconds passed first."""
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Future) -> dict:
        try:
            return handle.result()
        except Exception as exc:  # a failure of the driver thread itself, not the job
            return {"status": "failed", "error_kind": "crash", "metrics": {},
                    "error": f"local executor: {type(exc).__name__}: {exc}"}

    def abort(self, handles: list[Future]) -> None:
        """Stop everything in flight (the batch was interrupted): queued attempts never start."""
        for handle in handles:
            handle.cancel()
        for proc in list(self.running):
            kill_group(proc)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
