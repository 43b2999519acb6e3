"""Renderer benchmark: forward and forward+backward time and peak memory per backend.

One command, all backends side by side in one process:

    .venv/bin/python benchmarks/bench_render.py            # full grid
    .venv/bin/python benchmarks/bench_render.py --quick    # 128^2/5k and 256^2/20k only

Grid: image sizes 128^2, 256^2, 512^2 x 5k, 20k, 100k surfels; backends reference, native (when
it builds), gsplat (on CUDA). Scenes look like a fit: surfels on the surface of a bumpy closed
object that fills about half of the image, oriented along the surface, sized so neighbours overlap,
opacities 0.6-1, SH degree 3. Times are medians over repeats (after one warm-up run for native and
gsplat, which build/load kernels on first use); peak memory is
the extra resident memory (CPU: VmHWM after resetting it through /proc/self/clear_refs) or the
peak CUDA allocation. Process CPU time is recorded too (steadier than wall time when other jobs
share the machine). Reference configurations estimated to take too long on a CPU are skipped
and say so. Prints a table and writes benchmarks/results/render_bench.json with machine, torch
and commit info.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recon4d.render import Cameras, Surfels, render, to_camera_space  # noqa: E402
from recon4d.render.reference import _tile_lists  # noqa: E402
from recon4d.utils.atomic import atomic_write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "render_bench.json"
FULL_GRID = [(res, n) for res in (128, 256, 512) for n in (5_000, 20_000, 100_000)]
QUICK_GRID = [(128, 5_000), (256, 20_000)]
REFERENCE_CPU_LIMIT = 60e6
"""Reference on CPU is skipped above this many (tile pixel x surfel) pairs (~tens of seconds
per forward+backward on a 2-core machine)."""


def make_scene(num: int, res: int, seed: int = 0, device: str = "cpu") -> tuple[Surfels, Cameras]:
    """A fitted-looking scene: N surfels on a bumpy unit 'potato' seen from distance 3.

    The object's silhouette covers about half the image (focal 1.15 * res); surfels sit on the
    surface (Fibonacci lattice, displaced by low-frequency bumps), their discs are tangent to
    it, sigma = 0.75 x the lattice spacing (3-sigma discs overlap ~2 neighbours each way).
    """
    gen = torch.Generator().manual_seed(seed)
    i = torch.arange(num, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / num)
    theta = math.pi * (1 + 5 ** 0.5) * i
    d = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi),
                     torch.cos(phi)], -1)

    def radius(v):
        return (1.0 + 0.12 * torch.sin(3 * v[:, 0]) * torch.cos(2 * v[:, 1])
                + 0.08 * torch.sin(4 * v[:, 2] + 1.0))

    means = d * radius(d)[:, None] * torch.tensor([1.0, 0.85, 0.9], dtype=torch.float64)
    # Surface normal by finite differences of the displaced surface along two tangents.
    helper = torch.where(d[:, 2:3].abs() < 0.9, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                         torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    t1 = torch.linalg.cross(d, helper)
    t1 = t1 / t1.norm(dim=-1, keepdim=True)
    t2 = torch.linalg.cross(d, t1)
    eps = 1e-4

    def surf(v):
        v = v / v.norm(dim=-1, keepdim=True)
        return v * radius(v)[:, None] * torch.tensor([1.0, 0.85, 0.9], dtype=torch.float64)

    n = torch.linalg.cross(surf(d + eps * t1) - surf(d - eps * t1),
                           surf(d + eps * t2) - surf(d - eps * t2))
    n = n / n.norm(dim=-1, keepdim=True)
    n = torch.where((n * d).sum(-1, keepdim=True) < 0, -n, n)
    # Rotation with third column n: columns (a, b, n).
    a = torch.linalg.cross(n, helper)
    a = a / a.norm(dim=-1, keepdim=True)
    b = torch.linalg.cross(n, a)
    rot = torch.stack([a, b, n], -1)
    quats = _rotmat_to_quat(rot)
    spacing = math.sqrt(4 * math.pi * 0.9 / num)
    scales = spacing * 0.75 * (0.8 + 0.4 * torch.rand(num, 2, generator=gen, dtype=torch.float64))
    opacities = 0.6 + 0.4 * torch.rand(num, generator=gen, dtype=torch.float64)
    sh = torch.zeros(num, 16, 3, dtype=torch.float64)
    base = 0.5 + 0.4 * torch.sin(5 * means + torch.rand(3, generator=gen, dtype=torch.float64) * 6)
    sh[:, 0] = (base - 0.5) / 0.28209479177387814
    sh[:, 1:] = 0.05 * torch.randn(num, 15, 3, generator=gen, dtype=torch.float64)
    surfels = Surfels(means, quats, scales, opacities, sh).to(device=device, dtype=torch.float32)
    view = torch.eye(4)
    view[2, 3] = 3.0
    focal = 1.15 * res
    k = torch.tensor([[focal, 0.0, res / 2], [0.0, focal, res / 2], [0.0, 0.0, 1.0]])
    cameras = Cameras(view[None].to(device), k[None].to(device), res, res)
    return surfels, cameras


def _rotmat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions of (N, 3, 3) rotations (Shepperd's method, branch by largest term)."""
    m = rot
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cands = torch.stack([trace, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], -1)
    best = cands.argmax(-1)
    q = torch.zeros(m.shape[0], 4, dtype=m.dtype)
    for k in range(4):
        sel = best == k
        if not sel.any():
            continue
        r = m[sel]
        if k == 0:
            s = torch.sqrt(1 + r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]) * 2
            q[sel] = torch.stack([0.25 * s, (r[:, 2, 1] - r[:, 1, 2]) / s,
                                  (r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 1, 0] - r[:, 0, 1]) / s], -1)
        elif k == 1:
            s = torch.sqrt(1 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2
            q[sel] = torch.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, 0.25 * s,
                                  (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s], -1)
        elif k == 2:
            s = torch.sqrt(1 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2]) * 2
            q[sel] = torch.stack([(r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                                  0.25 * s, (r[:, 1, 2] + r[:, 2, 1]) / s], -1)
        else:
            s = torch.sqrt(1 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1]) * 2
            q[sel] = torch.stack([(r[:, 1, 0] - r[:, 0, 1]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s,
                                  (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s], -1)
    return q


# --- memory -----------------------------------------------------------------------------------

def _trim() -> None:
    """Give freed heap memory back to the OS so RSS-based peaks start from a clean base."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak extra memory of a block: CUDA max allocated, or CPU resident-set high-water mark."""

    def __init__(self, device: str):
        self.device = device
        self.peak_mb = float("nan")

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            _trim()
            try:
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.peak_mb = (_rss_kib("VmHWM") * 1024 - self.base) / 2**20


# --- timing -----------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _leaves(surfels: Surfels, cameras: Cameras, grad: bool) -> tuple[Surfels, Cameras]:
    tensors = [t.detach().clone().requires_grad_(grad) for t in
               (surfels.means, surfels.quats, surfels.scales, surfels.opacities, surfels.sh)]
    view = cameras.viewmats.detach().clone().requires_grad_(grad)
    return Surfels(*tensors), Cameras(view, cameras.Ks, cameras.width, cameras.height)


def _loss(out) -> torch.Tensor:
    return (out.rgb.sum() + out.depth.sum() + out.normal.sum() + out.distortion.sum()
            + out.normal_from_depth.sum())


def measure(backend: str, surfels: Surfels, cameras: Cameras, repeats: int) -> dict:
    device = surfels.device.type
    s_f, c_f = _leaves(surfels, cameras, grad=False)
    s_b, c_b = _leaves(surfels, cameras, grad=True)

    def forward():
        with torch.no_grad():
            render(s_f, c_f, backend=backend)
        _sync(device)

    def forward_backward():
        _loss(render(s_b, c_b, backend=backend)).backward()
        _sync(device)

    result = {}
    for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
        if backend != "reference":
            fn()  # warm-up: kernel build/load, CUDA context and caches (the reference has none)
        times, cpu_times = [], []
        with PeakMemory(device) as mem:
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
        result[f"{name}_s"] = statistics.median(times)
        # Process CPU time (all threads): less sensitive than wall time to other jobs sharing
        # the machine, so ratios on a busy CPU are better read from it.
        result[f"{name}_cpu_s"] = statistics.median(cpu_times)
        result[f"{name}_peak_mb"] = mem.peak_mb
    return result


def pair_count(surfels: Surfels, cameras: Cameras) -> int:
    """(tile pixels x surfel) pairs the tiled reference evaluates: its cost model."""
    with torch.no_grad():
        cs = to_camera_space(surfels, cameras)
        tiles, _, _ = _tile_lists(cs.means_c, cs.tu_c, cs.tv_c, cameras.Ks, cameras.width,
                                  cameras.height, 16)
    return int(tiles.numel()) * 256


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", None
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "commit": commit, "dirty": dirty,
            "processor": platform.processor(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        with open("/proc/cpuinfo") as handle:
            names = [ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")]
        info["cpu_model"] = names[0] if names else None
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def available_backends(device: str) -> tuple[list[str], dict]:
    backends, notes = ["reference"], {}
    try:
        from recon4d.render.native import native_available

        ok, reason = native_available(device)
    except Exception as exc:  # no module yet, or a build error
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    if ok:
        backends.append("native")
    else:
        notes["native"] = str(reason)
    if device == "cuda":
        from recon4d.render.gsplat_backend import gsplat_available

        ok, reason = gsplat_available()
        if ok:
            backends.append("gsplat")
        else:
            notes["gsplat"] = reason
    return backends, notes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="128^2/5k and 256^2/20k only, one timed repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backends", default=None,
                        help="comma-separated subset of reference,native,gsplat")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenMP CPU threads (default: torch's choice); 1 gives "
                             "steadier per-core figures on a machine shared with other jobs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    grid = QUICK_GRID if args.quick else FULL_GRID
    repeats = args.repeats or (1 if args.quick else 3)
    backends, notes = available_backends(args.device)
    if args.backends:
        wanted = args.backends.split(",")
        backends = [b for b in backends if b in wanted]
    for name, why in notes.items():
        print(f"# {name} unavailable: {why}")

    rows = []
    header = (f"{'res':>5} {'N':>7} {'backend':>9} {'fwd ms':>10} {'fwd+bwd ms':>11} "
              f"{'f+b cpu ms':>11} {'fwd MB':>8} {'f+b MB':>8}  note")
    print(header)
    print("-" * len(header))
    for res, num in grid:
        surfels, cameras = make_scene(num, res, device=args.device)
        pairs = pair_count(surfels, cameras)
        for backend in backends:
            row = {"res": res, "num_surfels": num, "backend": backend, "device": args.device,
                   "tile_pixel_pairs": pairs}
            if backend == "reference" and args.device == "cpu" and pairs > REFERENCE_CPU_LIMIT:
                row["skipped"] = (f"reference on CPU skipped: {pairs / 1e6:.0f}M tile-pixel "
                                  f"pairs > {REFERENCE_CPU_LIMIT / 1e6:.0f}M (too slow)")
            else:
                row.update(measure(backend, surfels, cameras, repeats))
            rows.append(row)
            if "skipped" in row:
                print(f"{res:>5} {num:>7} {backend:>9} {'-':>10} {'-':>11} {'-':>11} {'-':>8} "
                      f"{'-':>8}  {row['skipped']}")
            else:
                print(f"{res:>5} {num:>7} {backend:>9} {row['forward_s'] * 1e3:>10.1f} "
                      f"{row['forward_backward_s'] * 1e3:>11.1f} "
                      f"{row['forward_backward_cpu_s'] * 1e3:>11.1f} "
                      f"{row['forward_peak_mb']:>8.0f} {row['forward_backward_peak_mb']:>8.0f}",
                      flush=True)

    ratios = {}
    for res, num in grid:
        by = {r["backend"]: r for r in rows if r["res"] == res and r["num_surfels"] == num
              and "skipped" not in r}
        for other in ("native", "gsplat"):
            if other in by and "reference" in by:
                key = f"reference/{other} fwd+bwd at {res}^2, {num} surfels"
                ratios[key + " (wall)"] = (by["reference"]["forward_backward_s"]
                                           / by[other]["forward_backward_s"])
                if args.device == "cpu":
                    ratios[key + " (cpu time)"] = (by["reference"]["forward_backward_cpu_s"]
                                                   / by[other]["forward_backward_cpu_s"])
        if "native" in by and "gsplat" in by:
            ratios[f"native/gsplat fwd+bwd time at {res}^2, {num} surfels"] = (
                by["native"]["forward_backward_s"] / by["gsplat"]["forward_backward_s"])
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")

    report = {"benchmark": "render", "quick": args.quick, "repeats": repeats,
              "machine": machine_info(), "unavailable": notes, "rows": rows, "ratios": ratios,
              "command": " ".join([".venv/bin/python", "benchmarks/bench_render.py"]
                                  + (argv if argv is not None else sys.argv[1:]))}
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
