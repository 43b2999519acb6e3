"""What the batch machinery costs, apart from the reconstruction itself.

1. Per-job overhead: a batch of tiny jobs (each reads its input and writes metrics.json, so
   nearly all time is the process per attempt, state files and the summary) with the local
   executor at 1 and 2 workers and, if Ray is installed, the Ray executor on a local instance.
2. Planning a big batch: load a manifest of N rows whose jobs are all finished and check them
   (what a re-run of a finished 10k-clip batch does before anything runs), and one summary write.

Prints a table and writes benchmarks/results/batch_overhead.json.

    .venv/bin/python benchmarks/batch_overhead.py [--jobs 8] [--plan-rows 10000] [--no-ray]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def tiny_job(input_path: str, run_dir: str, overrides: dict) -> dict:
    """The smallest real job: read the input, write metrics.json."""
    from recon4d.rundir import RunDir

    run = RunDir(run_dir).create()
    size = len(Path(input_path).read_bytes())
    run.update_metrics({"bytes": size})
    return {"metrics": {"bytes": size}, "outputs": [run.metrics_path]}


def _manifest(folder: Path, count: int) -> Path:
    lines = ["input"]
    for i in range(count):
        path = folder / f"in_{i:05d}.txt"
        path.write_text("x" * (i + 1))
        lines.append(path.name)
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def bench_executor(executor: str, jobs: int, workers: int) -> dict:
    from batch_overhead import tiny_job  # by module name: workers cannot import __main__

    from recon4d.batch import load_manifest, run_batch
    from recon4d.utils import console

    console.set_quiet(True)
    with tempfile.TemporaryDirectory(prefix="r4dbench-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        manifest = _manifest(tmp, jobs)
        specs = load_manifest(manifest, tmp / "out")
        start = time.perf_counter()
        summary = run_batch(specs, tmp / "out", executor=executor, job=tiny_job, workers=workers)
        wall = time.perf_counter() - start
        assert summary["counts"]["done"] == jobs, summary["counts"]
        job_s = sum(j["seconds"] or 0.0 for j in summary["jobs"])
        start = time.perf_counter()
        again = run_batch(load_manifest(manifest, tmp / "out"), tmp / "out", executor=executor,
                          job=tiny_job, workers=workers)
        rerun = time.perf_counter() - start
        assert again["counts"]["skipped"] == jobs
    return {"executor": executor, "workers": workers, "jobs": jobs, "wall_s": round(wall, 3),
            "jobs_per_s": round(jobs / wall, 3),
            "overhead_per_job_s": round((wall * workers - job_s) / jobs, 3),
            "rerun_all_skipped_s": round(rerun, 3)}


def bench_plan(rows: int) -> dict:
    """Fabricate N finished jobs (state files + one output each), then time the skip check."""
    from recon4d.batch import load_manifest
    from recon4d.batch.jobs import Summary, finished_state, write_state

    with tempfile.TemporaryDirectory(prefix="r4dplan-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        manifest = _manifest(tmp, rows)
        out = tmp / "out"
        specs = load_manifest(manifest, out)
        for spec in specs:
            Path(spec.run_dir).mkdir(parents=True)
            (Path(spec.run_dir) / "metrics.json").write_text('{"psnr": 30.0}')
            write_state(out, spec.name, {"fingerprint": spec.fingerprint(), "status": "done",
                                         "outputs": {"metrics.json": 14},
                                         "metrics": {"psnr": 30.0, "ssim": 0.9}})
        start = time.perf_counter()
        specs = load_manifest(manifest, out)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        finished = sum(finished_state(out, spec) is not None for spec in specs)
        check_s = time.perf_counter() - start
        assert finished == rows
        summary = Summary(out, specs)
        start = time.perf_counter()
        summary.write()
        write_s = time.perf_counter() - start
    return {"rows": rows, "load_manifest_s": round(load_s, 3), "check_finished_s": round(check_s, 3),
            "summary_write_s": round(write_s, 3), "summary_min_interval_s": summary.min_interval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--plan-rows", type=int, default=10000)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    runs = [bench_executor("local", args.jobs, 1), bench_executor("local", args.jobs, 2)]
    if not args.no_ray:
        try:
            import ray

            ray_tmp = tempfile.mkdtemp(prefix="r4dray-", dir="/tmp")
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 1024 * 1024, _temp_dir=ray_tmp)
            ray_start = time.perf_counter() - start
            try:
                runs.append({**bench_executor("ray", args.jobs, 2), "ray_start_s": round(ray_start, 3)})
            finally:
                ray.shutdown()
                shutil.rmtree(ray_tmp, ignore_errors=True)
        except ImportError:
            pass
    plan = bench_plan(args.plan_rows)

    print(f"{'executor':<8} {'workers':>7} {'jobs':>5} {'wall s':>8} {'jobs/s':>7} "
          f"{'overhead/job s':>15} {'re-run s':>9}")
    for r in runs:
        print(f"{r['executor']:<8} {r['workers']:>7} {r['jobs']:>5} {r['wall_s']:>8.2f} "
              f"{r['jobs_per_s']:>7.2f} {r['overhead_per_job_s']:>15.2f} {r['rerun_all_skipped_s']:>9.2f}")
    print(f"\nplanning {plan['rows']} finished jobs: load manifest {plan['load_manifest_s']:.2f} s, "
          f"check finished {plan['check_finished_s']:.2f} s, one summary write "
          f"{plan['summary_write_s']:.2f} s (rewritten at most every {plan['summary_min_interval_s']:.0f} s)")
    result = {"benchmark": "batch_overhead", "machine": platform.node(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "executors": runs, "plan": plan,
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    target = HERE / "results" / "batch_overhead.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {target}")


if __name__ == "__main__":
    main()
