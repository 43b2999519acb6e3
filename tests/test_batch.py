"""Batch runs: manifests, safe run dirs, both executors, skip/resume, retries, timeouts, SIGKILL.

The executors are tested with light job functions defined here (workers import them by name,
as they would a user's own pipeline): ``ingest_job`` does real work on the shared clips (decode
frames with PyAV, key the near-white background, write a dataset and metrics), ``chaos_job``
reads an instruction from its input file to crash, hang or succeed. The full fit + export +
eval pipeline has its own test in tests/test_batch_pipeline.py.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from recon4d.batch import load_manifest, run_batch, safe_job_name
from recon4d.batch.jobs import read_state
from recon4d.batch.manifest import resolve_run_dir
from recon4d.cli.main import main
from recon4d.errors import UserError

TESTS_DIR = Path(__file__).resolve().parent
FRAMES_PER_JOB = 4


# Job functions the workers import ----------------------------------------------------------------
def ingest_job(input_path: str, run_dir: str, overrides: dict) -> dict:
    """Decode a few frames of a real clip, key out the white background, write a dataset + metrics."""
    import av
    import numpy as np
    from PIL import Image

    from recon4d.data.dataset import CameraSet, write_dataset
    from recon4d.rundir import RunDir

    path = Path(input_path)
    if not path.is_file():
        raise UserError(f"input '{path}' does not exist: fix the manifest")
    side = int(overrides.get("resolution", 32))
    frames = []
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                image = frame.to_image().convert("RGB").resize((side, side), Image.BILINEAR)
                frames.append(np.asarray(image))
                if len(frames) == FRAMES_PER_JOB:
                    break
    except av.error.FFmpegError as exc:
        raise UserError(f"input '{path.name}' is not a readable video ({exc.strerror}): "
                        "re-encode it") from exc
    delay = float(os.environ.get("RECON4D_TEST_JOB_DELAY", "0"))
    time.sleep(delay)  # widens the window in which the kill test stops the batch
    frames = np.stack(frames)
    masks = (frames.min(axis=-1) < 235).astype(np.uint8) * 255
    count = len(frames)
    eye = np.repeat(np.eye(4)[None], count, axis=0)
    eye[:, 2, 3] = 2.7
    Ks = np.repeat(np.array([[side, 0, side / 2], [0, side, side / 2], [0, 0, 1.0]])[None], count, 0)
    run = RunDir(run_dir).create()
    write_dataset(run.dataset, frames, masks, np.linspace(0, 1, count), CameraSet(eye, Ks),
                  {"path": str(path), "type": "video"}, "keying", overwrite=True)
    metrics = {"num_frames": count, "resolution": side,
               "mask_coverage": float(masks.mean() / 255.0),
               "mean_rgb": [float(c) for c in frames.reshape(-1, 3).mean(0) / 255.0]}
    run.update_metrics(metrics)
    return {"metrics": metrics, "outputs": [run.dataset / "manifest.json", run.metrics_path]}


def chaos_job(input_path: str, run_dir: str, overrides: dict) -> dict:
    """The input file says what to do: 'ok', 'crash-once' (SIGKILL itself on the first try),
    'stopped-once' (what a fit raises after SIGTERM, on the first try), 'hang'."""
    from recon4d.rundir import RunDir

    run = RunDir(run_dir).create()
    order = Path(input_path).read_text().strip()
    if order == "crash-once" and not (run.root / "crashed-once").exists():
        (run.root / "crashed-once").write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    if order == "stopped-once" and not (run.root / "stopped-once").exists():
        from recon4d.errors import Interrupted

        (run.root / "stopped-once").write_text("1")
        raise Interrupted("stopped at step 3 of 9 with a checkpoint", exit_code=143)
    if order == "hang":
        time.sleep(600)
    run.update_metrics({"order": order})
    return {"metrics": {"order": order}, "outputs": [run.metrics_path]}


def gpu_probe_job(input_path: str, run_dir: str, overrides: dict) -> dict:
    """Record which GPUs the job was given and what torch sees."""
    import torch

    from recon4d.rundir import RunDir

    run = RunDir(run_dir).create()
    x = torch.ones(1024, device="cuda") * 2.0  # fails unless a GPU is really usable
    metrics = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "device_count": torch.cuda.device_count(), "sum": float(x.sum().item())}
    run.update_metrics(metrics)
    return {"metrics": metrics, "outputs": [run.metrics_path]}


# Helpers ----------------------------------------------------------------------------------------
def _write_csv(path: Path, rows: list[dict]) -> Path:
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "input", k))
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _inputs(tmp_path: Path, clips_dir: Path) -> dict[str, Path]:
    """Two real clips and one file that only looks like a video."""
    broken = tmp_path / "inputs" / "broken.mp4"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"this is not an mp4 file\n" * 40)
    return {"dolphin": clips_dir / "dolphin.mp4", "robot": clips_dir / "green_robot.mp4",
            "broken": broken}


def _jobs_by_name(summary: dict) -> dict[str, dict]:
    return {job["name"]: job for job in summary["jobs"]}


def _kill_after_first_job(command: list[str], env: dict, summary_path: Path) -> dict:
    """Start a batch, SIGKILL it as soon as its summary shows one finished job; return the counts."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    counts = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if summary_path.is_file():
                counts = json.loads(summary_path.read_text())["counts"]
                if counts["done"] >= 1:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return counts


# Manifests and paths ----------------------------------------------------------------------------
def test_names_and_run_dirs_stay_inside_out(tmp_path):
    out = tmp_path / "out"
    manifest = _write_csv(tmp_path / "m.csv", [
        {"input": "a/clip.mp4", "name": "../../escape"},
        {"input": "b/clip.mp4", "name": "/etc/passwd"},
        {"input": "c/clip.mp4", "name": ".."},
        {"input": "../outside/clip.mp4"},
    ])
    specs = load_manifest(manifest, out)
    jobs = (out / "jobs").resolve()
    for spec in specs:
        assert Path(spec.run_dir).resolve().parent == jobs, spec
    assert [s.name for s in specs][:3] == ["escape", "etc_passwd", "job"]
    assert safe_job_name("a/../../b\\c") == "a_.._.._b_c"
    # The outside input is fine to *read*; it is only resolved relative to the manifest.
    assert specs[3].input == str((tmp_path.parent / "outside" / "clip.mp4"))
    # A run dir that is a symlink to elsewhere is refused even with a harmless name.
    jobs.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (jobs / "innocent").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="outside"):
        resolve_run_dir(out, "innocent")
    with pytest.raises(UserError, match="outside"):
        resolve_run_dir(out, "../x")


def test_manifest_csv_and_jsonl_overrides(tmp_path):
    out = tmp_path / "out"
    csv_manifest = tmp_path / "m.csv"
    csv_manifest.write_text("input,preset,resolution,formats,prompt\n"
                            "clips/a.mp4,gpu-quality,64,glb-skin;video,a dancing robot\n"
                            "other/a.mp4,,,,\n"
                            "\n"
                            "b.gif,,,,\n")
    specs = load_manifest(csv_manifest, out, defaults={"preset": "cpu-fast", "formats": ["glb-morph"]})
    assert [s.overrides for s in specs] == [
        {"preset": "gpu-quality", "resolution": 64, "formats": ["glb-skin", "video"]},
        {"preset": "cpu-fast", "formats": ["glb-morph"]},
        {"preset": "cpu-fast", "formats": ["glb-morph"]}]
    assert specs[0].input == str(tmp_path / "clips" / "a.mp4")
    # Two inputs named a.mp4 get distinct names that do not depend on their row numbers.
    assert specs[0].name != specs[1].name and specs[0].name.startswith("a-")
    assert specs[2].name == "b" and specs[0].line == 2 and specs[2].line == 5
    reordered = tmp_path / "r.csv"
    reordered.write_text("input,preset,resolution,formats\nother/a.mp4,,,\n"
                         "clips/a.mp4,gpu-quality,64,glb-skin;video\n")
    again = load_manifest(reordered, out, defaults={"preset": "cpu-fast", "formats": ["glb-morph"]})
    assert {s.name: s.fingerprint() for s in again} == {s.name: s.fingerprint() for s in specs[:2]}

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text('# a comment\n{"input": "x.mp4", "resolution": 128, "formats": ["usd"]}\n'
                     '{"input": "/data/y.mp4", "name": "why"}\n')
    specs = load_manifest(jsonl, out)
    assert specs[0].overrides == {"resolution": 128, "formats": ["usd"]}
    depth = tmp_path / "d.csv"
    depth.write_text("input,depth,depth_kind\nx.mp4,maps/x.npy,depth\n")
    assert load_manifest(depth, out)[0].overrides == {"depth": str(tmp_path / "maps" / "x.npy"),
                                                      "depth_kind": "depth"}
    assert (specs[1].name, specs[1].input, specs[1].line) == ("why", "/data/y.mp4", 3)
    budget = tmp_path / "t.csv"
    budget.write_text("input,time_budget\nx.mp4,7.5\ny.mp4,\n")
    assert [s.overrides for s in load_manifest(budget, out, defaults={"time_budget": "2"})] == [
        {"time_budget": 7.5}, {"time_budget": 2.0}]

    bad = [("input,resolution\nx.mp4,big\n", r"m2.csv:2: 'resolution'"),
           ("video\nx.mp4\n", "no 'input' column"),
           ("input,name\nx.mp4,same\ny.mp4,same\n", "already used on line 2"),
           ("input\nx.mp4\nx.mp4\n", "repeats line 2"),
           ("input,formats\nx.mp4,glb skin!\n", "bad export format"),
           ("input,depth_kind\nx.mp4,metric\n", "bad depth_kind 'metric'"),
           ("input,time_budget\nx.mp4,0\n", r"m2.csv:2: 'time_budget' must be a positive"),
           ("input,time_budget\nx.mp4,soon\n", "'time_budget' must be a positive number")]
    for text, message in bad:
        (tmp_path / "m2.csv").write_text(text)
        with pytest.raises(UserError, match=message):
            load_manifest(tmp_path / "m2.csv", out)
    (tmp_path / "m3.jsonl").write_text('{"input": "x.mp4"}\n{"input": \n')
    with pytest.raises(UserError, match="m3.jsonl:2: not valid JSON"):
        load_manifest(tmp_path / "m3.jsonl", out)


# Local executor ---------------------------------------------------------------------------------
def test_local_batch_reports_invalid_input_and_skips_finished_jobs(tmp_path, clips_dir):
    inputs = _inputs(tmp_path, clips_dir)
    manifest = _write_csv(tmp_path / "batch.csv", [
        {"input": inputs["dolphin"]},
        {"input": inputs["robot"], "name": "../robot", "resolution": 24},
        {"input": inputs["broken"]},
    ])
    out = tmp_path / "out"
    specs = load_manifest(manifest, out)
    summary = run_batch(specs, out, job=ingest_job, workers=2, retries=1)
    jobs = _jobs_by_name(summary)
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 1
    for name, side in (("dolphin", 32), ("robot", 24)):
        job = jobs[name]
        assert job["status"] == "done" and job["attempts"] == 1 and job["error"] is None
        assert job["metrics"]["num_frames"] == FRAMES_PER_JOB
        assert job["metrics"]["resolution"] == side
        assert 0.01 < job["metrics"]["mask_coverage"] < 0.9  # an object on a near-white background
        run_dir = out / "jobs" / name
        assert json.loads((run_dir / "metrics.json").read_text())["resolution"] == side
        assert (run_dir / "dataset" / "frames" / "00003.png").is_file()
    broken = jobs["broken"]
    # A bad input is a user error: reported once, not retried.
    assert broken["status"] == "failed" and broken["error_kind"] == "user" and broken["attempts"] == 1
    assert "broken.mp4" in broken["error"] and "not a readable video" in broken["error"]
    assert "not a readable video" in (out / "logs" / "broken.log").read_text()

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["counts"] == summary["counts"]
    with open(out / "summary.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows = {row["name"]: row for row in reader}
    header = reader.fieldnames
    assert "metrics.mask_coverage" in header and not any("mean_rgb" in h for h in header)
    assert rows["robot"]["status"] == "done" and rows["robot"]["resolution"] == "24"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["metrics.mask_coverage"] == ""

    finished_at = read_state(out, "dolphin")["finished_at"]
    again = _jobs_by_name(run_batch(load_manifest(manifest, out), out, job=ingest_job, workers=2))
    assert again["dolphin"]["status"] == again["robot"]["status"] == "skipped"
    assert again["dolphin"]["metrics"] == jobs["dolphin"]["metrics"]
    assert read_state(out, "dolphin")["finished_at"] == finished_at
    assert again["broken"]["status"] == "failed"  # tried again: the file may have been fixed

    # An edited row (new resolution) or a damaged output makes that job run again.
    manifest.write_text(manifest.read_text().replace(f"{inputs['dolphin']},,", f"{inputs['dolphin']},,16"))
    (out / "jobs" / "robot" / "metrics.json").write_text("{}")
    for name in ("dolphin", "robot"):
        (out / "jobs" / name / "earlier-run.txt").write_text("left by the earlier run")
    third = _jobs_by_name(run_batch(load_manifest(manifest, out), out, job=ingest_job, workers=2))
    assert third["dolphin"]["status"] == "done" and third["dolphin"]["metrics"]["resolution"] == 16
    assert third["robot"]["status"] == "done" and third["robot"]["metrics"]["resolution"] == 24
    # The edited row starts from an empty run dir; the damaged one resumes in its own.
    assert not (out / "jobs" / "dolphin" / "earlier-run.txt").exists()
    assert (out / "jobs" / "robot" / "earlier-run.txt").exists()


def test_crashed_worker_is_retried_and_hung_job_times_out(tmp_path):
    for order in ("ok", "crash-once", "stopped-once", "hang"):
        (tmp_path / f"{order}.txt").write_text(order)
    manifest = _write_csv(tmp_path / "m.csv", [{"input": f"{o}.txt"}
                                               for o in ("ok", "crash-once", "stopped-once")])
    out = tmp_path / "out"
    summary = run_batch(load_manifest(manifest, out), out, job=chaos_job, workers=2, retries=1)
    jobs = _jobs_by_name(summary)
    assert jobs["ok"]["status"] == "done" and jobs["ok"]["metrics"] == {"order": "ok"}
    crash = jobs["crash-once"]
    assert crash["status"] == "done" and crash["attempts"] == 2
    log = (out / "logs" / "crash-once.log").read_text()
    assert "attempt 1" in log and "attempt 2" in log
    stopped = jobs["stopped-once"]  # stopped by a signal, not by the batch: retried
    assert stopped["status"] == "done" and stopped["attempts"] == 2
    log = (out / "logs" / "stopped-once.log").read_text()
    assert "stopped-once: stopped by a signal: stopped at step 3 of 9 with a checkpoint" in log
    assert "Traceback" not in log

    # The timeout applies to every job of a batch, so the hanging job gets a batch of its own.
    manifest = _write_csv(tmp_path / "h.csv", [{"input": "hang.txt"}])
    hang = run_batch(load_manifest(manifest, out), out, job=chaos_job, retries=1, timeout=2)["jobs"][0]
    assert hang["status"] == "failed" and hang["error_kind"] == "timeout" and hang["attempts"] == 1
    assert "timed out after 2 s" in hang["error"]
    assert read_state(out, "hang")["status"] == "failed"


def test_cli_batch_killed_midway_resumes(tmp_path, clips_dir):
    inputs = _inputs(tmp_path, clips_dir)
    manifest = _write_csv(tmp_path / "batch.csv", [
        {"input": inputs["dolphin"]}, {"input": inputs["robot"]},
        {"input": clips_dir / "hiphop_parrot.mp4"}])
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               RECON4D_TEST_JOB_DELAY="1.5")
    command = [sys.executable, "-m", "recon4d", "batch", str(manifest), "--out", str(out),
               "--workers", "1", "--job", "test_batch:ingest_job"]
    summary_path = out / "summary.json"
    counts = _kill_after_first_job(command, env, summary_path)
    assert counts["done"] == 1 and counts["pending"] + counts["running"] == 2, counts
    first_done = [j["name"] for j in json.loads(summary_path.read_text())["jobs"] if j["status"] == "done"]

    assert main(["batch", str(manifest), "--out", str(out), "--workers", "2", "--job",
                 "test_batch:ingest_job"]) == 0
    final = _jobs_by_name(json.loads(summary_path.read_text()))
    assert final[first_done[0]]["status"] == "skipped"
    assert sorted(j["status"] for j in final.values()) == ["done", "done", "skipped"]
    for job in final.values():
        assert job["metrics"]["num_frames"] == FRAMES_PER_JOB
        assert read_state(out, job["name"])["status"] == "done"


def _default_sigint() -> None:
    """Give the child a terminal's SIGINT handling: an ignored SIGINT (left by anything imported
    into the test process) is inherited across exec, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_running_jobs(tmp_path, clips_dir):
    manifest = _write_csv(tmp_path / "batch.csv", [{"input": clips_dir / "dolphin.mp4"}])
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
               RECON4D_TEST_JOB_DELAY="120")
    proc = subprocess.Popen([sys.executable, "-m", "recon4d", "batch", str(manifest), "--out", str(out),
                             "--job", "test_batch:ingest_job"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 60
        while (read_state(out, "dolphin") or {}).get("status") != "running":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        worker_pid = read_state(out, "dolphin")["pid"]
        proc.send_signal(signal.SIGINT)
        # communicate() drains stderr while waiting, so a chatty batch can never block on a
        # full pipe; the limit is generous for a busy CI machine.
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 130
    finally:
        proc.kill()
    assert "interrupted" in stderr.decode()
    with pytest.raises(ProcessLookupError):  # the job's process was stopped too
        for _ in range(50):
            os.kill(worker_pid, 0)
            time.sleep(0.1)
    assert json.loads((out / "summary.json").read_text())["counts"]["pending"] == 1


def test_cli_errors_and_dry_run(tmp_path, capsys, monkeypatch):
    (tmp_path / "m.csv").write_text("input,resolution\nclip.mp4,-3\n")
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m.csv:2: 'resolution'" in err[0]
    (tmp_path / "m.csv").write_text("input,name\nclip.mp4,../../x\n")
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("x ") and "to run" in line and str(tmp_path / "out" / "jobs" / "x") in line
    assert not (tmp_path / "out").exists()
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
                 "--job", "recon4d.no_such_module:run"]) == 2
    assert "cannot be imported" in capsys.readouterr().err
    (tmp_path / "clip.mp4").write_bytes(b"x")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU, whatever the machine has
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
                 "--gpus-per-job", "1"]) == 2
    assert "--gpus-per-job 1 but this machine shows 0 GPU(s)" in capsys.readouterr().err
    for option, value, expected in [("--workers", "-1", "--workers must be 0"),
                                    ("--cpus-per-job", "nan", "--cpus-per-job must be > 0"),
                                    ("--gpus-per-job", "inf", "--cpus-per-job must be > 0"),
                                    ("--timeout", "nan", "--timeout must be positive seconds")]:
        assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"),
                     option, value]) == 2, option
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (option, err)


# Ray executor ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    """A small Ray instance for this module's tests; yields its address for outside drivers."""
    ray = pytest.importorskip("ray")
    # Ray's socket paths must stay under 108 bytes, so its temp dir cannot live in tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="r4dray-", dir="/tmp")
    saved = os.environ.get("RECON4D_TEST_JOB_DELAY")
    os.environ["RECON4D_TEST_JOB_DELAY"] = "1.0"  # Ray's workers inherit it: see the kill test
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=100 * 1024 * 1024, _temp_dir=ray_tmp)
    finally:
        if saved is None:
            os.environ.pop("RECON4D_TEST_JOB_DELAY")
        else:
            os.environ["RECON4D_TEST_JOB_DELAY"] = saved
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_batch_on_local_ray(tmp_path, clips_dir, local_ray):
    import ray

    inputs = _inputs(tmp_path, clips_dir)
    manifest = _write_csv(tmp_path / "batch.csv", [
        {"input": inputs["dolphin"]}, {"input": inputs["robot"]}, {"input": inputs["broken"]}])
    out = tmp_path / "out"
    summary = run_batch(load_manifest(manifest, out), out, executor="ray", job=ingest_job,
                        cpus_per_job=1, retries=1)
    jobs = _jobs_by_name(summary)
    assert summary["counts"] == {"pending": 0, "running": 0, "done": 2, "skipped": 0, "failed": 1}
    for name in ("dolphin", "green_robot"):
        assert jobs[name]["metrics"]["num_frames"] == FRAMES_PER_JOB
        assert 0.01 < jobs[name]["metrics"]["mask_coverage"] < 0.9
        assert (out / "jobs" / name / "dataset" / "manifest.json").is_file()
    assert jobs["broken"]["error_kind"] == "user" and "not a readable video" in jobs["broken"]["error"]
    assert jobs["broken"]["attempts"] == 1
    assert json.loads((out / "summary.json").read_text())["executor"] == "ray"
    again = run_batch(load_manifest(manifest, out), out, executor="ray", job=ingest_job)
    assert again["counts"]["skipped"] == 2 and again["counts"]["failed"] == 1
    assert ray.is_initialized()  # a Ray instance the caller started is left running


def test_ray_batch_killed_midway_resumes(tmp_path, clips_dir, local_ray):
    """A driver connected with --address is SIGKILLed after one job; a re-run finishes the rest."""
    manifest = _write_csv(tmp_path / "batch.csv", [
        {"input": clips_dir / name} for name in ("dolphin.mp4", "monkey.mp4", "chest.gif")])
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "recon4d", "batch", str(manifest), "--out", str(out),
               "--executor", "ray", "--address", local_ray, "--workers", "1",
               "--job", "test_batch:ingest_job"]
    counts = _kill_after_first_job(command, env, out / "summary.json")
    assert counts["done"] == 1 and counts["pending"] + counts["running"] == 2, counts
    summary = run_batch(load_manifest(manifest, out), out, executor="ray", job=ingest_job)
    statuses = sorted(j["status"] for j in summary["jobs"])
    assert statuses == ["done", "done", "skipped"], summary["jobs"]
    assert all(j["metrics"]["num_frames"] == FRAMES_PER_JOB for j in summary["jobs"])


@pytest.mark.cuda
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_each_job_gets_its_own_gpu(tmp_path, executor, request):
    """With --gpus-per-job 1 every job sees exactly one device, and it works."""
    for i in range(3):
        (tmp_path / f"probe{i}.txt").write_text("probe")
    manifest = _write_csv(tmp_path / "m.csv", [{"input": f"probe{i}.txt"} for i in range(3)])
    out = tmp_path / "out"
    if executor == "ray":
        request.getfixturevalue("local_ray")  # Ray detects the GPUs itself
    summary = run_batch(load_manifest(manifest, out), out, executor=executor, job=gpu_probe_job,
                        gpus_per_job=1, workers=2)
    assert summary["counts"]["done"] == 3, summary["jobs"]
    for job in summary["jobs"]:
        assert job["metrics"]["device_count"] == 1 and job["metrics"]["sum"] == 2048.0
        assert len(job["metrics"]["cuda_visible_devices"].split(",")) == 1
