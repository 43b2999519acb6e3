"""The Ray executor: the same job attempts as Ray tasks with CPU/GPU resource requests.

Each attempt is one Ray task that runs :func:`recon4d.batch.worker.run_attempt`, i.e. the very
same child process the local executor runs; Ray only decides *where* (which node, which GPU:
Ray sets ``CUDA_VISIBLE_DEVICES`` for a task that asks for ``num_gpus``). Retries and timeouts
stay with recon4d (``max_retries=0`` for Ray), so both executors report failures the same way.

Connects to ``address`` (``auto``, ``HOST:6379`` or ``ray://HOST:10001``), reuses a Ray
instance the caller already initialised, or starts a small local one and stops it at the end.
Every node must see OUT (and the inputs) at the same path: shared storage, see docs/batch.md.
"""

from __future__ import annotations

from recon4d.batch.local import thread_env
from recon4d.batch.worker import run_attempt
from recon4d.errors import UserError

# Ray's object store only carries small outcome dicts here, so a local instance needs little.
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024


def _ray_attempt(out_dir: str, spec_dict: dict, job_ref: str, attempt: int, timeout, python_path,
                 env) -> dict:
    """Body of the Ray task (module level so Ray pickles it by reference)."""
    return run_attempt(out_dir, spec_dict, job_ref, attempt, timeout, python_path, env)


class RayExecutor:
    """Submit attempts as Ray tasks.

    Args:
        out_dir, job_ref, python_path, timeout: as for the local executor.
        address: Ray cluster address; None starts (or reuses) a local instance.
        workers: cap on attempts in flight (0: no cap, Ray queues tasks by resources).
        cpus_per_job, gpus_per_job: the task's ``num_cpus`` / ``num_gpus`` (fractions allowed).
    """

    name = "ray"

    def __init__(self, out_dir: str, job_ref: str, python_path: list[str], address: str | None = None,
                 workers: int = 0, cpus_per_job: float = 1, gpus_per_job: float = 0,
                 timeout: float | None = None):
        try:
            import ray
        except ImportError as exc:
            raise UserError("the ray executor needs Ray: pip install 'recon4d[batch]' (or use "
                            "--executor local)") from exc
        self.ray = ray
        self.out_dir, self.job_ref, self.python_path = str(out_dir), job_ref, list(python_path)
        self.timeout = timeout
        self.env = thread_env(cpus_per_job)
        self.workers = int(workers or 0)
        self.started_here = False
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False}
            if address:
                options["address"] = address
            else:
                options["object_store_memory"] = LOCAL_OBJECT_STORE_BYTES
                if self.workers:
                    options["num_cpus"] = max(1, int(round(self.workers * max(cpus_per_job, 1))))
            try:
                ray.init(**options)
            except ConnectionError as exc:
                raise UserError(f"cannot reach the Ray cluster at '{address}' ({exc}): check "
                                "--address and that 'ray start --head' runs there") from exc
            self.started_here = True
        self._check_resources(cpus_per_job, gpus_per_job, fixed=self.started_here and not address)
        self.task = ray.remote(_ray_attempt).options(
            num_cpus=cpus_per_job, num_gpus=gpus_per_job or 0, max_retries=0,
            name="recon4d-batch-job")

    def _check_resources(self, cpus_per_job: float, gpus_per_job: float, fixed: bool) -> None:
        """Refuse requests a local Ray can never meet; on a cluster, warn (an autoscaler may add nodes)."""
        resources = self.ray.cluster_resources()
        problems = []
        if gpus_per_job and resources.get("GPU", 0) < gpus_per_job:
            problems.append(f"--gpus-per-job {gpus_per_job:g} but Ray has {resources.get('GPU', 0):g} GPU(s)")
        if resources.get("CPU", 0) < cpus_per_job:
            problems.append(f"--cpus-per-job {cpus_per_job:g} but Ray has {resources.get('CPU', 0):g} CPU(s)")
        if not problems:
            return
        if fixed:
            self.close()
            raise UserError(f"{'; '.join(problems)}: lower the request or use a cluster with more")
        from recon4d.utils.console import warn

        warn(f"{'; '.join(problems)} now: jobs wait until nodes that fit them join the cluster")

    @property
    def capacity(self) -> int:
        return self.workers if self.workers > 0 else 1 << 30

    def submit(self, spec_dict: dict, attempt: int):
        return self.task.remote(self.out_dir, spec_dict, self.job_ref, attempt, self.timeout,
                                self.python_path, self.env)

    def wait_any(self, handles: list, timeout: float | None = None) -> list:
        """Tasks that ended; empty when ``timeout`` seconds passed first."""
        ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
        return ready

    def result(self, handle) -> dict:
        try:
            return self.ray.get(handle)
        except Exception as exc:  # node lost, worker killed, task cancelled: the job may retry
            first = " ".join(str(exc).split())[:300]
            return {"status": "failed", "error_kind": "crash", "metrics": {},
                    "error": f"ray: {type(exc).__name__}: {first}"}

    def abort(self, handles: list) -> None:
        """Cancel the tasks in flight; force-killing the Ray worker also ends the job process."""
        for handle in handles:
            try:
                self.ray.cancel(handle, force=True)
            except Exception:  # already finished or unknown to Ray: nothing to stop
                pass

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
            self.started_here = False
