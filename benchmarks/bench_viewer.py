"""Viewer speed: server-side render rate, and what the live viewer costs a running fit.

1. ``render``: frames per second of the viewer's server-side render (``SceneRenderer.render``:
   warped surfels -> image + depth for the browser) at 256x256 on the CPU, and 512x512 on a GPU
   when one is present. Scene: the built-in ``default`` synthetic scene with a model from the fit
   (cpu-fast preset: 6000 surfels, 25 bones; ``--fit-steps`` steps), or ``--run RUN_DIR``.
   Cases: ``orbit`` (camera moves around the object, time fixed: render only), ``playback``
   (time moves every frame: warp + render), and every render mode.
2. ``live``: the fit's step time alone, and with a :class:`LiveViewer` whose page is open in
   headless Chromium, idle and while playing (the worst case: continuous re-rendering under the
   render-share cap). Median seconds per step of the full stage; slowdown in percent.

Prints a table and writes benchmarks/results/bench_viewer.json.

    .venv/bin/python benchmarks/bench_viewer.py [--part render live] [--run RUN_DIR]
        [--frames 30] [--live-steps 40] [--screenshots docs/img]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the headless-Chromium driver used by the tests


def _default_dataset(work: Path) -> Path:
    from recon4d.scenes import make_scene

    return make_scene("default", work / "default_ds", seed=0)


def _fit_model(dataset: Path, run_dir: Path, steps: int):
    """A cpu-fast model of ``dataset`` after ``steps`` full-stage steps (coarse stage skipped
    short: it does not change the model's size)."""
    from recon4d.model import load_run
    from recon4d.train.api import fit

    fit(dataset, run_dir, preset="cpu-fast",
        overrides={"coarse.steps": 1, "full.steps": max(steps, 1)})
    return load_run(run_dir, device="cpu")


def _orbit_poses(scene, count: int):
    """``count`` viewer poses on a circle around the object at input camera 0's distance."""
    import numpy as np

    from recon4d.viewer.cameras import ViewPose, camera_to_pose, matrix_to_quat_wxyz
    from recon4d.viewer.overlays import scene_extent

    cams = scene.input_cameras()
    base = camera_to_pose(cams.viewmats[0].double().cpu().numpy(),
                          cams.Ks[0].double().cpu().numpy(), cams.height)
    center, _ = scene_extent(scene)
    radius = float(np.linalg.norm(base.position - center))
    up = base.up()
    # Orthonormal frame around the up axis.
    side = np.cross(up, base.forward())
    side /= np.linalg.norm(side)
    back = np.cross(side, up)
    poses = []
    for i in range(count):
        angle = 2 * math.pi * i / count
        eye = center + radius * (math.cos(angle) * -back + math.sin(angle) * side)
        z = center - eye
        z /= np.linalg.norm(z)
        x = np.cross(-up, z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        poses.append(ViewPose(matrix_to_quat_wxyz(np.stack([x, y, z], 1)), eye, base.fov_y))
    return poses


def bench_render(scene, side: int, frames: int, device: str) -> list[dict]:
    """Time the renders in a worker thread, as the viewer's render thread does them.

    (On this shared 2-core machine torch's OpenMP pool is far slower in the main thread when
    other processes load the CPU; the viewer never renders in the main thread.)
    """
    import threading

    rows: list[dict] = []
    worker = threading.Thread(target=lambda: rows.extend(_bench_render(scene, side, frames,
                                                                         device)))
    worker.start()
    worker.join()
    return rows


def _bench_render(scene, side: int, frames: int, device: str) -> list[dict]:
    from recon4d.viewer.engine import SceneRenderer
    from recon4d.viewer.modes import RENDER_MODES

    renderer = SceneRenderer(scene, backend="auto")
    poses = _orbit_poses(scene, frames)
    renderer.render(poses[0], side, side, 0.0, "RGB")  # warm-up: kernel build, caches
    rows = []

    def run(case: str, mode: str, time_moves: bool):
        times = []
        for i, pose in enumerate(poses):
            t = (i / max(frames - 1, 1)) if time_moves else 0.5
            start = time.perf_counter()
            renderer.render(pose, side, side, t, mode)
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        rows.append({"case": case, "mode": mode, "side": side, "device": device,
                     "frames": frames, "median_ms": round(median * 1000, 1),
                     "fps": round(1.0 / median, 2),
                     "mean_fps": round(len(times) / sum(times), 2)})

    renderer.surfels(0.5)
    run("orbit", "RGB", False)
    run("playback", "RGB", True)
    for mode in RENDER_MODES[1:]:
        run("orbit", mode, False)
    return rows


def bench_live(dataset: Path, work: Path, steps: int, chromium: str | None,
               repeats: int = 3) -> list[dict]:
    """Full-stage step times of short fits without and with the live viewer.

    The conditions run interleaved ``repeats`` times (A B C A B C ...) so slow drifts of the
    machine's background load hit every condition alike; the figure is the median over all
    timed steps of a condition.
    """
    conditions = ["no viewer"]
    conditions += (["viewer, page open, idle", "viewer, page open, playing"] if chromium
                   else ["viewer, no page"])
    pooled: dict[str, list[float]] = {c: [] for c in conditions}
    extras: dict[str, list[dict]] = {c: [] for c in conditions}
    for repeat in range(repeats):
        for index, condition in enumerate(conditions):
            gaps, extra = _live_once(dataset, work / f"live_{repeat}_{index}", steps, chromium,
                                     condition)
            pooled[condition] += gaps
            extras[condition].append(extra)
            print(f"[{condition}] repeat {repeat}: {len(gaps)} steps, median "
                  f"{statistics.median(gaps):.4f} s", flush=True)
    rows = []
    for condition in conditions:
        gaps = pooled[condition]
        row = {"condition": condition, "steps_timed": len(gaps), "repeats": repeats,
               "median_step_s": round(statistics.median(gaps), 4),
               "mean_step_s": round(sum(gaps) / len(gaps), 4)}
        if extras[condition] and extras[condition][0]:
            for key in extras[condition][0]:
                row[key] = round(sum(e.get(key, 0) for e in extras[condition]), 3)
        rows.append(row)
    base = rows[0]["median_step_s"]
    for row in rows:
        row["slowdown_pct"] = round(100 * (row["median_step_s"] / base - 1), 1)
    return rows


def _live_once(dataset: Path, run_dir: Path, steps: int, chromium: str | None,
               condition: str) -> tuple[list[float], dict]:
    from recon4d.train.api import fit
    from recon4d.viewer.live import LiveViewer

    stamps: list[float] = []
    viewer = None if condition == "no viewer" else LiveViewer(run_dir=None, port=0)
    state: dict = {"browser": None, "opened": False, "connected_at": None}

    def on_step(step, model, metrics):
        stamps.append(time.perf_counter())
        if viewer is None:
            return
        viewer.on_step(step, model, metrics)
        if not state["opened"] and viewer.app is not None and chromium:
            state["opened"] = True
            from viewer_browser import HeadlessChromium

            state["browser"] = HeadlessChromium(chromium, 900, 650)
            state["browser"].open(viewer.url)
            deadline = time.monotonic() + 60
            while not viewer.app.client_ids() and time.monotonic() < deadline:
                time.sleep(0.1)
            if "playing" in condition:
                viewer.app.playback.playing = True
            state["render_s0"] = viewer.app.render_seconds
            viewer.on_step_seconds = 0.0  # count the trainer-thread cost from here too
            state["connected_at"] = time.perf_counter()
            stamps.clear()  # measure from here: page open and connected

    extra: dict = {}
    try:
        fit(dataset, run_dir, preset="cpu-fast", on_step=on_step,
            overrides={"coarse.steps": 1, "full.steps": steps + 5, "num_threads": 1})
        if viewer is not None and viewer.app is not None and state["connected_at"]:
            app = viewer.app
            elapsed = time.perf_counter() - state["connected_at"]
            extra = {"renders": sum(app.render_count(c) for c in app.client_ids()),
                     "render_s": app.render_seconds - state["render_s0"],
                     "connected_s": elapsed,
                     "snapshots": viewer.snapshots, "snapshot_s": viewer.snapshot_seconds,
                     "on_step_s": viewer.on_step_seconds}
    finally:
        if state["browser"] is not None:
            state["browser"].close()
        if viewer is not None:
            viewer.close()
    return [b - a for a, b in zip(stamps[5:], stamps[6:])], extra


def screenshots(source, out_dir: Path, chromium: str) -> list[str]:
    """Viewer screenshots: RGB at two times, bones mode with trails, depth, normals."""
    from PIL import Image
    from viewer_browser import HeadlessChromium

    from recon4d.viewer.app import ViewerApp

    out_dir.mkdir(parents=True, exist_ok=True)
    app = ViewerApp(source, port=0, full_side=512)
    written = []
    try:
        with HeadlessChromium(chromium, 1280, 800) as browser:
            browser.open(app.url)
            deadline = time.monotonic() + 60
            while not app.client_ids() and time.monotonic() < deadline:
                time.sleep(0.1)
            # The page fades in on load; close the "software WebGL" notice of headless Chromium
            # (it is not part of the UI).
            time.sleep(5.0)
            browser.evaluate("document.querySelectorAll('.mantine-Notification-closeButton')"
                             ".forEach(b => b.click())")
            times = source.scene.frame_times
            shots = [("viewer_rgb_t0.png", "RGB", float(times[0])),
                     ("viewer_rgb_tmid.png", "RGB", float(times[len(times) // 2])),
                     ("viewer_bones.png", "Bones", float(times[len(times) // 2])),
                     ("viewer_depth.png", "Depth", float(times[len(times) // 2])),
                     ("viewer_normals.png", "Normals", float(times[len(times) // 2]))]
            for name, mode, t in shots:
                app.set_mode(mode)
                app.set_time(t)
                _wait_full(app, t, mode)
                time.sleep(1.5)
                Image.fromarray(browser.screenshot_array()).save(out_dir / name)
                written.append(str(out_dir / name))
    finally:
        app.stop()
    return written


def _wait_full(app, t: float, mode: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cid in app.client_ids():
            view = app._views.get(cid)
            if (view and view.last_key and abs(view.last_key[4] - t) < 1e-4
                    and view.last_key[5] == mode and view.last_side >= app.resolution.full_side):
                return
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="*", default=["render", "live"],
                        choices=["render", "live"], help="none: only --screenshots")
    parser.add_argument("--run", type=Path, default=None, help="benchmark this run's model")
    parser.add_argument("--fit-steps", type=int, default=2)
    parser.add_argument("--frames", type=int, default=30, help="renders per case")
    parser.add_argument("--live-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="also save viewer screenshots of --run (or the model) here")
    args = parser.parse_args()

    import torch

    from recon4d.utils import console
    from viewer_browser import find_chromium

    console.set_quiet(True)
    results: dict = {"machine": {"platform": platform.platform(), "cpus": __import__("os").cpu_count(),
                                 "load_avg_start": list(__import__("os").getloadavg()),
                                 "torch": torch.__version__,
                                 "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}}
    chromium = find_chromium()
    with tempfile.TemporaryDirectory(prefix="r4d-bench-viewer-") as tmp:
        work = Path(tmp)
        dataset = None
        if args.run is not None:
            from recon4d.model import load_run

            scene = load_run(args.run, device="cpu")
            results["scene"] = {"run": str(args.run)}
        else:
            dataset = _default_dataset(work)
            scene = _fit_model(dataset, work / "model_run", args.fit_steps)
            results["scene"] = {"scene": "default (synthetic)", "preset": "cpu-fast",
                                "fit_steps": args.fit_steps}
        results["scene"].update(surfels=len(scene.canonical_surfels()), bones=scene.num_bones,
                                frames=len(scene.frame_times))
        if "render" in args.part:
            rows = bench_render(scene, 256, args.frames, "cpu")
            if torch.cuda.is_available():
                rows += bench_render(scene.to("cuda"), 512, args.frames, "cuda")
            results["render"] = rows
            print(f"\nserver-side render ({results['scene']['surfels']} surfels, "
                  f"{results['scene']['bones']} bones)")
            print(f"{'case':<10} {'mode':<8} {'size':>5} {'device':<6} {'median ms':>10} {'fps':>7}")
            for r in rows:
                print(f"{r['case']:<10} {r['mode']:<8} {r['side']:>5} {r['device']:<6} "
                      f"{r['median_ms']:>10} {r['fps']:>7}")
        if "live" in args.part:
            dataset = dataset or _default_dataset(work)
            rows = bench_live(dataset, work, args.live_steps, chromium, args.repeats)
            results["live"] = rows
            print("\nlive viewer cost to the fit (median full-stage step time)")
            for r in rows:
                share = (f"{100 * r['render_s'] / r['connected_s']:.1f}%"
                         if r.get("connected_s") else "-")
                in_fit = (f"{100 * r['on_step_s'] / (r['mean_step_s'] * r['steps_timed']):.1f}%"
                          if r.get("on_step_s") is not None else "-")
                print(f"{r['condition']:<28} {r['median_step_s']!s:>8} s/step  "
                      f"slowdown {r['slowdown_pct']:>6}%  render share {share:>6}  "
                      f"on_step share {in_fit:>6}  snapshots {r.get('snapshots', '-')}")
        if args.screenshots is not None and chromium:
            from recon4d.viewer.source import ViewerSource, open_run

            source = open_run(args.run) if args.run else ViewerSource(scene, name="default")
            results["screenshots"] = screenshots(source, args.screenshots, chromium)
    results["machine"]["load_avg_end"] = list(__import__("os").getloadavg())
    out = HERE / "results" / "bench_viewer.json"
    from recon4d.utils.atomic import atomic_write_json, read_json

    previous = read_json(out) if out.is_file() else {}
    if previous.get("scene") != results.get("scene"):
        previous = {}  # results of another scene do not mix
    previous.update(results)  # a run of one --part keeps the other part's last figures
    atomic_write_json(out, previous)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
