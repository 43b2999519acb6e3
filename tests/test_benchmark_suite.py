"""The benchmark suite's planning and summary helpers (benchmarks/run_suite.py), without fitting."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("run_suite_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_shared_selects_every_clip_entry(suite):
    from recon4d.scenes import list_scenes

    items = suite.plan(suite.build_parser().parse_args(["--scenes", "none", "--clips", "shared"]))
    every = {r["name"] for r in list_scenes() if r["kind"] == "clip"}
    assert {i["name"] for i in items} == every
    assert {"bunnyman", "dolphin", "chest", "windmill", "hiphop_parrot"} <= every
    assert all(i["kind"] == "clip" for i in items)
    default = suite.plan(suite.build_parser().parse_args(["--scenes", "none"]))
    assert [i["name"] for i in default] == suite.DEFAULT_CLIPS


def test_clip_summary_means_and_target_count(suite):
    rows = [
        {"name": "a", "kind": "clip", "status": "ok", "psnr_heldout": 30.0, "psnr_heldout_interp_baseline": 28.0},
        {"name": "b", "kind": "clip", "status": "ok", "psnr_heldout": 24.0, "psnr_heldout_interp_baseline": 26.0},
        {"name": "c", "kind": "clip", "status": "ok", "psnr_heldout": 27.0},
        {"name": "d", "kind": "clip", "status": "failed: boom", "psnr_heldout": None},
        {"name": "s", "kind": "scene", "status": "ok", "psnr_heldout": 40.0},
    ]
    line = suite.clip_summary(rows)
    assert "27.00 dB over 3" in line
    assert "on the 2 with a flow-interpolation baseline: fit 27.00 dB, baseline 27.00 dB" in line
    assert line.endswith("2 of 3 at or above 27 dB.")
    assert suite.clip_summary(rows[3:]) is None


def test_suite_markdown_carries_the_clip_summary(suite, tmp_path):
    rows = [{"name": "a", "kind": "clip", "status": "ok", "psnr_heldout": 25.5}]
    meta = {"date": "d", "commit": "c", "machine": {}, "backend": "native", "preset": "cpu-fast",
            "seed": 0, "fit_overrides": {}, "command": "python benchmarks/run_suite.py"}
    suite.write_results(rows, meta, tmp_path)
    text = (tmp_path / "suite.md").read_text()
    assert "Clips: mean held-out PSNR 25.50 dB over 1; 0 of 1 at or above 27 dB." in text


def test_step_benchmark_measures_a_real_step(tmp_path):
    """benchmarks/bench_step.py's measurement on a tiny generated scene: every part is timed
    and the model it times has the surfel count asked for (a smoke test that the benchmark
    keeps up with the trainer's internals, not a speed test)."""
    from recon4d.scenes import make_scene

    spec = importlib.util.spec_from_file_location("bench_step_under_test",
                                                  SCRIPT.with_name("bench_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scene = make_scene("blob", tmp_path / "blob", resolution=48, frames=6)
    import torch

    threads = torch.get_num_threads()
    result = module.measure(scene, surfels=300, warmup=1, steps=2, threads=1)
    assert torch.get_num_threads() == threads  # the test process keeps its thread count
    assert result["resolution"] == 48 and 0 < result["surfels"] <= 300 * 2
    for key in ("step_ms", "warp_ms", "render_ms"):
        assert result[key] > 0, (key, result)
