"""Training-step benchmark: the time of one full-stage step of `recon4d fit` on the CPU.

    .venv/bin/python benchmarks/bench_step.py                       # this checkout
    .venv/bin/python benchmarks/bench_step.py --baseline ../old     # against another checkout

The built-in default scene is generated at 256x256 (cached under runs/benchmarks/), and a
Trainer with the cpu-fast preset starts straight in the full stage with 16k surfels (the size a
256x256 clip reaches), one thread (--threads to change). Each measurement runs in its own process: warm-up steps, then
the median time of the next steps, plus the median of the step's parts (warp, render and image
losses, forward and backward, on the same model). With --baseline the two checkouts alternate
(baseline, this, baseline, this, ...) so that a shared machine's load falls on both; the ratio
of the medians is the figure to read. Prints a table and writes benchmarks/results/step_bench.json
(step_bench_threadsN.json with --threads N).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "step_bench.json"
SCENE = REPO / "runs" / "benchmarks" / "step_bench_scene"


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(scene: Path, surfels: int, warmup: int, steps: int, threads: int = 1) -> dict:
    """Run inside the checkout under test (its recon4d is first on sys.path); restores the
    process's torch thread count afterwards."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(scene, surfels, warmup, steps, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _measure(scene: Path, surfels: int, warmup: int, steps: int, threads: int) -> dict:
    import torch

    from recon4d.data.dataset import load_dataset
    from recon4d.losses import geometry, photometric
    from recon4d.render import render
    from recon4d.render.types import Surfels
    from recon4d.rundir import RunDir
    from recon4d.train.config import apply_overrides, preset, resolve_for_dataset
    from recon4d.train.trainer import Trainer

    dataset = load_dataset(scene)
    config = resolve_for_dataset(preset("cpu-fast"), dataset.width, dataset.height,
                                 dataset.num_frames)
    config = apply_overrides(config, {"coarse_surfels": 0, "model.num_surfels": surfels,
                                      "num_threads": threads, "seed": 0})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(dataset, RunDir(tmp).create(), config)
        trainer.initialise()
        for _ in range(warmup):
            trainer.train_step()
            trainer.step += 1
        per_step = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step()
            per_step.append(time.perf_counter() - start)
            trainer.step += 1
        model = trainer.model
        frame = trainer.train_frames[0]
        t = float(trainer.times[frame])
        target = trainer.targets[frame:frame + 1]
        mask = trainer.masks[frame:frame + 1]
        with torch.no_grad():
            cams = model.cameras([frame])
            state = model.surfels_at(t)
        leaves = [x.detach().clone().requires_grad_(True) for x in
                  (state.means, state.quats, state.scales, state.opacities, state.sh)]

        def warp():
            surfels_t, warp_q = model.warped_state(t)
            (surfels_t.means.sum() + surfels_t.quats.sum() + surfels_t.scales.sum()
             + warp_q.sum()).backward()

        def rendered():
            return render(Surfels(*leaves), cams, backend=config.backend,
                          background=trainer.background)

        def render_both():
            out = rendered()
            (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.normal_from_depth.sum()
             + out.distortion.sum()).backward()

        def losses():
            out = rendered()
            total = (photometric.photometric_per_image(out.rgb, target, config.full.ssim_weight).sum()
                     + geometry.mask_loss(out, mask).sum() + geometry.normal_consistency(out, mask).sum()
                     + geometry.distortion_loss(out).sum())
            total.backward()

        render_ms = _median_ms(render_both, 15)
        return {"step_ms": 1000 * statistics.median(per_step), "warp_ms": _median_ms(warp, 15),
                "render_ms": render_ms, "losses_ms": _median_ms(losses, 15) - render_ms,
                "surfels": len(model.canonical), "resolution": dataset.width,
                "torch": torch.__version__}


def _commit(checkout: Path) -> str:
    proc = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty"],
                          capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _run_in(checkout: Path, args) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(checkout)!r}); "
            f"sys.path.insert(1, {str(REPO / 'benchmarks')!r}); import bench_step; "
            f"print('RESULT ' + json.dumps(bench_step.measure(__import__('pathlib').Path("
            f"{str(SCENE)!r}), {args.surfels}, {args.warmup}, {args.steps}, {args.threads})))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=checkout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"bench_step: the measurement in {checkout} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another recon4d checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3, help="processes per checkout")
    parser.add_argument("--surfels", type=int, default=16000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per measurement")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "recon4d" / "__init__.py").is_file():
        sys.exit(f"bench_step: --baseline '{args.baseline}' is not a recon4d checkout")
    if not (SCENE / "manifest.json").is_file():
        sys.path.insert(0, str(REPO))
        from scenes import make_scene

        print(f"generating the default scene at 256x256 into {SCENE} (once)", flush=True)
        make_scene("default", SCENE, resolution=256, overwrite=True)
    checkouts = {"this": REPO} if args.baseline is None else {"baseline": args.baseline.resolve(),
                                                              "this": REPO}
    runs: dict[str, list[dict]] = {name: [] for name in checkouts}
    for round_index in range(args.rounds):
        for name, checkout in checkouts.items():
            runs[name].append(_run_in(checkout, args))
            print(f"round {round_index + 1}/{args.rounds} {name}: "
                  f"{runs[name][-1]['step_ms']:.1f} ms/step", flush=True)
    keys = ("step_ms", "warp_ms", "render_ms", "losses_ms")
    summary = {name: {key: statistics.median(r[key] for r in rows) for key in keys}
               for name, rows in runs.items()}
    print(f"\n| checkout | step ms | warp fwd+bwd ms | render fwd+bwd ms | image losses fwd+bwd ms |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in summary.items():
        print(f"| {name} ({_commit(checkouts[name])}) | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |")
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}",
              "command": "python benchmarks/bench_step.py" + (f" --baseline {args.baseline}" if args.baseline else ""),
              "settings": {"surfels": args.surfels, "warmup": args.warmup, "steps": args.steps,
                           "rounds": args.rounds, "threads": args.threads, "scene": "default at 256x256"},
              "commits": {name: _commit(path) for name, path in checkouts.items()},
              "runs": runs, "medians": summary}
    if args.baseline is not None:
        ratio = summary["baseline"]["step_ms"] / summary["this"]["step_ms"]
        result["speedup"] = ratio
        print(f"\nstep time, baseline / this: {ratio:.2f}x")
    sys.path.insert(0, str(REPO))
    from recon4d.utils.atomic import atomic_write_json

    path = RESULTS if args.threads == 1 else RESULTS.with_name(f"step_bench_threads{args.threads}.json")
    atomic_write_json(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
