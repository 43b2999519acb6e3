"""One attempt of one job, in its own process: both executors run jobs through here.

The parent side, :func:`run_attempt`, starts ``python -m recon4d.batch.worker`` in a new
process group with its output going to the job's log, waits at most ``timeout`` seconds (then
kills the whole group), and reads the outcome from the job's state file. The child side,
:func:`main`, takes the job's lock, decides whether the run dir can be resumed, calls the job
function ``fn(input_path, run_dir, overrides) -> {"metrics": {...}, "outputs": [...]}`` and
records ``done`` (with the outputs' sizes) or ``failed`` (with the error) in the state file.

A process per attempt is what makes timeouts, crashes (segfaults, out-of-memory kills) and GPU
memory leaks harmless to the other jobs. A worker whose parent dies (the batch was killed) kills
its own process group, so a re-run never races an orphan on the same run dir; the job lock
covers the moment in between.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

from recon4d.batch.jobs import (finished_state, host_name, lock_path, log_path, now_iso,
                                output_sizes, read_state, write_state)
from recon4d.batch.manifest import JobSpec, jobs_root

KILL_GRACE_S = 10.0
DEFAULT_JOB = "recon4d.pipeline:run_job"


# Job functions ----------------------------------------------------------------------------------
def job_reference(job: str | Callable | None) -> tuple[str, list[str]]:
    """``(module:function, [import roots])`` for a job given as a reference string or a function.

    The import roots are the folders a fresh process must have on ``sys.path`` to import the
    job's module (e.g. the tests folder for a test job); installed modules need none.

    Raises:
        UserError: the job cannot be imported or is not a module-level function.
    """
    from recon4d.errors import UserError

    if job is None:
        job = DEFAULT_JOB
    if callable(job):
        module_name, qualname = job.__module__, job.__qualname__
        if module_name == "__main__" or "<locals>" in qualname:
            raise UserError(f"job function {qualname} must be defined at module level in an "
                            "importable module (workers import it by name)")
        ref = f"{module_name}:{qualname}"
    else:
        ref = str(job)
    load_job(ref)  # fail here, in the driver, rather than in every worker
    module = sys.modules[ref.split(":", 1)[0]]
    roots = []
    file = getattr(module, "__file__", None)
    if file:
        depth = ref.split(":", 1)[0].count(".") + (1 if Path(file).name == "__init__.py" else 0)
        roots.append(str(Path(file).resolve().parents[depth]))
    return ref, roots


def load_job(ref: str) -> Callable:
    """Import ``module:function``."""
    from recon4d.errors import UserError

    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"job '{ref}' must look like 'package.module:function'")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"job '{ref}' cannot be imported ({exc}): check the module and function "
                        "name") from exc
    if not callable(target):
        raise UserError(f"job '{ref}' is not a function")
    return target


# Parent side ------------------------------------------------------------------------------------
def run_attempt(out_dir: str, spec_dict: dict, job_ref: str, attempt: int,
                timeout: float | None = None, python_path: list[str] | None = None,
                env: dict | None = None, running: set | None = None) -> dict:
    """Run one attempt of a job in a child process and return its outcome.

    Args:
        out_dir: the batch folder (shared storage when jobs run on other machines).
        spec_dict: :meth:`JobSpec.to_dict` of the job.
        job_ref: ``module:function`` of the job function.
        attempt: 1 for the first try, 2 for the first retry, ...
        timeout: seconds before the attempt's process group is killed; None for no limit.
        python_path: folders prepended to PYTHONPATH so the child can import the job.
        env: extra environment variables (thread counts, CUDA_VISIBLE_DEVICES).
        running: a set the child's Popen is kept in while it runs, so the caller can stop it
            (see :func:`kill_group`) when the batch is interrupted.

    Returns:
        ``{"status": "done"|"failed", "error", "error_kind", "seconds", "metrics", "attempt",
        "host"}``.
    """
    spec = JobSpec.from_dict(spec_dict)
    out = Path(out_dir)
    log = log_path(out, spec.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(env or {})
    paths = list(python_path or []) + [p for p in child_env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        child_env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    child_env["RECON4D_BATCH_PARENT_PID"] = str(os.getpid())
    command = [sys.executable, "-m", "recon4d.batch.worker", "--out", str(out), "--job", job_ref,
               "--attempt", str(attempt), "--spec", json.dumps(spec_dict)]
    start = time.monotonic()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n=== {spec.name}: attempt {attempt} on {host_name()} at {now_iso()} "
                     f"(job {job_ref}, timeout {timeout or 'none'}) ===\n")
        handle.flush()
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env, start_new_session=True)
        if running is not None:
            running.add(proc)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
        except BaseException:  # the driver is being stopped: take the job down with it
            kill_group(proc)
            raise
        finally:
            if running is not None:
                running.discard(proc)
    seconds = time.monotonic() - start
    base = {"attempt": attempt, "seconds": round(seconds, 3), "host": host_name()}
    state = read_state(out, spec.name)
    kept = {k: state[k] for k in ("started_at", "pid", "input", "run_dir") if state and k in state}
    fresh = (state is not None and state.get("attempt") == attempt
             and state.get("fingerprint") == spec.fingerprint())
    # A job that recorded its end counts, even if the timeout struck while its process exited.
    if fresh and (state.get("status") == "done" or (state.get("status") == "failed" and not timed_out)):
        return {**base, "status": state["status"], "error": state.get("error"),
                "error_kind": state.get("error_kind"), "metrics": state.get("metrics") or {},
                "seconds": state.get("seconds", base["seconds"])}
    if timed_out:
        outcome = {"status": "failed", "error_kind": "timeout",
                   "error": f"timed out after {timeout:g} s (raise --timeout or use a faster preset)"}
    else:
        code = proc.returncode
        reason = (f"worker killed by signal {signal.Signals(-code).name}" if code < 0
                  else f"worker exited with code {code} without a result")
        outcome = {"status": "failed", "error_kind": "crash",
                   "error": f"{reason} (see {log}; out of memory?)"}
    # Keep the old fingerprint when the child died before taking the job over: the run dir
    # may still hold another row's run, which the next attempt must then delete.
    fingerprint = spec.fingerprint() if fresh or state is None else state.get("fingerprint")
    write_state(out, spec.name, {**kept, "fingerprint": fingerprint, "status": "failed", **base,
                                 **outcome})
    return {**base, **outcome, "metrics": {}}


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the attempt's process group, then SIGKILL what is left after a grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# Child side -------------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    """Kill this process group when the parent goes away (the batch driver was killed)."""
    def loop() -> None:
        while True:
            if os.getppid() != parent_pid:
                try:
                    os.killpg(os.getpgrp(), signal.SIGKILL)
                finally:
                    os._exit(137)
            time.sleep(0.5)

    threading.Thread(target=loop, name="recon4d-parent-watch", daemon=True).start()


def _acquire_lock(path: Path):
    """Block until this process holds the job's lock (released by the kernel when it exits)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    return handle


def execute(out: Path, spec: JobSpec, job_ref: str, attempt: int) -> int:
    """The child's work: lock, prepare the run dir, run the job, record the result. Returns an exit code."""
    from recon4d.errors import UserError

    lock = _acquire_lock(lock_path(out, spec.name))
    try:
        base = {"fingerprint": spec.fingerprint(), "attempt": attempt, "host": host_name(),
                "pid": os.getpid(), "input": spec.input, "run_dir": spec.run_dir}
        done = finished_state(out, spec)
        if done is not None:  # finished by another process while this one waited for the lock
            write_state(out, spec.name, {**done, "attempt": attempt})
            print(f"{spec.name}: already finished, skipping", flush=True)
            return 0
        run_dir = Path(spec.run_dir)
        previous = read_state(out, spec.name)
        if previous and previous.get("fingerprint") != spec.fingerprint() and run_dir.exists():
            # The row changed (input or overrides): its old checkpoints must not be resumed.
            if run_dir.resolve().parent != jobs_root(out).resolve():
                raise RuntimeError(f"refusing to delete {run_dir}: not directly inside {jobs_root(out)}")
            print(f"{spec.name}: manifest row changed since the last run, starting over", flush=True)
            shutil.rmtree(run_dir)
        started = time.time()
        write_state(out, spec.name, {**base, "status": "running", "started_at": now_iso()})
        try:
            job = load_job(job_ref)
            result = job(spec.input, spec.run_dir, dict(spec.overrides))
            if not isinstance(result, dict):
                raise TypeError(f"job {job_ref} returned {type(result).__name__}, expected a dict "
                                "with 'metrics' and 'outputs'")
            outputs = output_sizes(spec.run_dir, list(result.get("outputs") or []))
            if not outputs:
                raise ValueError(f"job {job_ref} reported no output files")
            metrics = dict(result.get("metrics") or {})
        except KeyboardInterrupt as exc:  # SIGTERM (a timeout) or SIGINT: a fit saved its step
            # The driver records why it stopped the attempt (timeout, crash to retry, the batch
            # interrupted); the log gets one line instead of a traceback.
            print(f"{spec.name}: stopped by a signal{': ' + str(exc) if str(exc) else ''}",
                  flush=True)
            return int(getattr(exc, "exit_code", 130))
        except UserError as exc:
            print(f"{spec.name}: input problem: {exc}", flush=True)
            write_state(out, spec.name, {**base, "status": "failed", "error_kind": "user",
                                         "error": str(exc), "finished_at": now_iso(),
                                         "seconds": round(time.time() - started, 3)})
            return 2
        except Exception as exc:  # any pipeline failure is this job's failure, not the batch's
            traceback.print_exc()
            message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
            write_state(out, spec.name, {**base, "status": "failed", "error_kind": "error",
                                         "error": message, "finished_at": now_iso(),
                                         "seconds": round(time.time() - started, 3)})
            return 1
        write_state(out, spec.name, {**base, "status": "done", "error": None, "error_kind": None,
                                     "metrics": metrics, "outputs": outputs,
                                     "finished_at": now_iso(),
                                     "seconds": round(time.time() - started, 3)})
        print(f"{spec.name}: done in {time.time() - started:.1f} s", flush=True)
        return 0
    finally:
        lock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recon4d.batch.worker",
                                     description="Run one attempt of one batch job (internal).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--spec", required=True, help="the job spec as JSON")
    args = parser.parse_args(argv)
    parent = os.environ.get("RECON4D_BATCH_PARENT_PID")
    if parent and parent.isdigit():
        _watch_parent(int(parent))
    from recon4d.utils import console

    console.set_quiet(False)
    return execute(Path(args.out), JobSpec.from_dict(json.loads(args.spec)), args.job, args.attempt)


if __name__ == "__main__":
    sys.exit(main())
