"""The batch runner with the real pipeline (ingest + fit + export + eval) on tiny real inputs.

Inputs are cut from the shared clips: an 8-frame 64x64 MP4, an 8-frame 64x64 PNG folder, and
the first 3 kB of an MP4 (a truncated download). The fit uses the ``test`` preset; the
evaluation leaves out the animated-mesh extraction and plots (a minute of CPU per clip) through
``run_job``'s ``eval_options`` and is otherwise the published held-out-frame protocol.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recon4d.batch import load_manifest, run_batch
from recon4d.batch.jobs import read_state

FRAMES = 8
SIDE = 64


def light_pipeline_job(input_path: str, run_dir: str, overrides: dict) -> dict:
    """recon4d.pipeline.run_job with a cheaper evaluation (no animated mesh, no plots)."""
    from recon4d.eval.evaluate import EvalOptions
    from recon4d.pipeline import run_job

    return run_job(input_path, run_dir, overrides,
                   eval_options=EvalOptions(animated=False, plot=False))


def _frames(clip: Path) -> list:
    import av
    from PIL import Image

    frames = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_image().convert("RGB").resize((SIDE, SIDE), Image.BILINEAR))
            if len(frames) == FRAMES:
                break
    return frames


def _tiny_inputs(folder: Path, clips_dir: Path) -> dict[str, Path]:
    import av
    import numpy as np

    folder.mkdir(parents=True)
    video = folder / "tiny_dolphin.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for image in _frames(clips_dir / "dolphin.mp4"):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames_dir = folder / "tiny_robot"
    frames_dir.mkdir()
    for i, image in enumerate(_frames(clips_dir / "green_robot.mp4")):
        image.save(frames_dir / f"{i:03d}.png")
    # Depth maps for the frame folder (one per frame, at another resolution than the frames).
    maps = np.stack([np.full((32, 32), 2.0 + i, np.float32) for i in range(FRAMES)])
    maps[:, :, 16:] += 0.5
    np.save(folder / "robot_depth.npy", maps)
    truncated = folder / "truncated.mp4"
    truncated.write_bytes((clips_dir / "monkey.mp4").read_bytes()[:3000])
    return {"video": video, "frames": frames_dir, "truncated": truncated}


def test_batch_runs_the_real_pipeline(tmp_path, clips_dir):
    _tiny_inputs(tmp_path / "inputs", clips_dir)
    manifest = tmp_path / "batch.jsonl"
    manifest.write_text("\n".join(json.dumps(row) for row in [
        {"input": "inputs/tiny_dolphin.mp4"},
        {"input": "inputs/tiny_robot", "resolution": 24, "depth": "inputs/robot_depth.npy",
         "depth_kind": "depth", "time_budget": 30},
        {"input": "inputs/truncated.mp4"}]) + "\n")
    out = tmp_path / "out"
    defaults = {"preset": "test", "resolution": 32, "formats": ["splats"]}
    summary = run_batch(load_manifest(manifest, out, defaults), out, job=light_pipeline_job,
                        workers=2, retries=1)
    jobs = {job["name"]: job for job in summary["jobs"]}
    assert summary["counts"]["done"] == 2 and summary["counts"]["failed"] == 1, jobs

    for name in ("tiny_dolphin", "tiny_robot"):
        job = jobs[name]
        metrics = job["metrics"]
        assert job["status"] == "done", job
        assert metrics["fit_steps"] == 6  # the test preset: 2 coarse + 4 full steps
        assert math.isfinite(metrics["psnr_heldout"]) and metrics["psnr_heldout"] > 5.0
        assert 0.0 < metrics["mask_iou_heldout"] <= 1.0
        run_dir = Path(job["run_dir"])
        full = json.loads((run_dir / "metrics.json").read_text())
        assert full["eval"]["summary"]["psnr_heldout"] == pytest.approx(metrics["psnr_heldout"])
        manifest_json = json.loads((run_dir / "dataset" / "manifest.json").read_text())
        side = 24 if name == "tiny_robot" else 32  # a row's resolution beats the batch default
        assert (manifest_json["width"], manifest_json["num_frames"]) == (side, FRAMES)
        config = json.loads((run_dir / "config.json").read_text())["config"]
        # The row's time budget (minutes) reached the fit; the other row has none.
        assert config["time_budget_s"] == (1800.0 if name == "tiny_robot" else 0.0)
        if name == "tiny_robot":  # the row's depth maps reached the dataset and the fit
            assert manifest_json["depth"]["kind"] == "depth"
            log = (run_dir / "logs" / "metrics.jsonl").read_text()
            assert '"depth":' in log
        else:
            assert "depth" not in manifest_json
        outputs = read_state(out, name)["outputs"]
        assert any(p.startswith("checkpoints/step_") for p in outputs)
        assert sum(p.startswith("export/splats/frame_") for p in outputs) == FRAMES

    bad = jobs["truncated"]
    assert bad["status"] == "failed" and bad["error_kind"] == "user" and bad["attempts"] == 1
    assert "truncated.mp4" in bad["error"]
    csv_text = (out / "summary.csv").read_text()
    assert "metrics.psnr_heldout" in csv_text.splitlines()[0]

    again = run_batch(load_manifest(manifest, out, defaults), out, job=light_pipeline_job, workers=2)
    assert again["counts"]["skipped"] == 2 and again["counts"]["failed"] == 1
