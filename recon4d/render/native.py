"""The ``native`` rasteriser core: recon4d's own C++ (CPU) and CUDA kernels behind torch autograd.

The kernel sources live in ``cuda/`` (installed as :mod:`recon4d.cuda`). They are compiled with
``torch.utils.cpp_extension.load`` on first use and cached per source hash in
``$RECON4D_EXTENSIONS_DIR`` (default ``$XDG_CACHE_HOME/recon4d/torch_extensions`` or
``~/.cache/recon4d/torch_extensions``). The CPU build needs only the machine's C++ compiler
(g++ with OpenMP); the CUDA build is attempted only when ``torch.cuda.is_available()`` and
``nvcc`` exist. Concurrent first builds from several processes are serialised by an
``fcntl`` lock (released by the kernel even when a builder is killed), so the cache is never
corrupted and a dead builder never leaves others waiting forever.

Public API:

- :func:`native_available` ``(device=None) -> (ok, reason)``: builds/loads the kernels, never raises.
- :func:`rasterize_core_native`: the spec's ``rasterize_core`` (docs/design.md §4), forward and
  backward on the kernels.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path

import torch
from torch.autograd.function import once_differentiable

CPU_SOURCES = ("bindings.cpp", "rasterize_cpu.cpp")
CUDA_SOURCES = ("rasterize_cuda.cu",)
HEADERS = ("rasterize.h", "rasterize_common.h", "rasterize_cuda.h")

_lock = threading.Lock()
_modules: dict[str, object] = {}
_failures: dict[str, str] = {}


def extensions_dir() -> Path:
    """Root of the build cache (one sub-directory per source hash and variant)."""
    override = os.environ.get("RECON4D_EXTENSIONS_DIR")
    if override:
        return Path(override).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "recon4d" / "torch_extensions"


def _source_dir() -> Path:
    from recon4d.cuda import SOURCE_DIR

    return Path(SOURCE_DIR)


def _variant_of(device: torch.device | str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def _build_spec(variant: str) -> tuple[str, list[Path], list[str], list[str], list[str]]:
    """(module name, sources, cflags, cuda cflags, ldflags) of one variant."""
    src = _source_dir()
    sources = [src / name for name in CPU_SOURCES]
    cflags = ["-O3", "-fopenmp", "-DNDEBUG"]
    cuda_cflags: list[str] = []
    if variant == "cuda":
        sources += [src / name for name in CUDA_SOURCES]
        cflags.append("-DRECON4D_WITH_CUDA")
        cuda_cflags = ["-O3", "-DRECON4D_WITH_CUDA", "--use_fast_math"]
    ldflags = ["-fopenmp"]
    digest = hashlib.sha256()
    for path in sources + [src / name for name in HEADERS if (src / name).exists()]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(cflags + cuda_cflags + ldflags).encode())
    digest.update(torch.__version__.encode())
    digest.update(sys.version.encode())
    name = f"recon4d_raster_{variant}_{digest.hexdigest()[:12]}"
    # The ops register under torch.ops.<name>: unique per build, so variants and stale builds
    # never collide in one process.
    cflags.append(f"-DR4D_LIB_NAME={name}")
    if cuda_cflags:
        cuda_cflags.append(f"-DR4D_LIB_NAME={name}")
    return name, sources, cflags, cuda_cflags, ldflags


def _why_cuda_unbuildable() -> str | None:
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None and shutil.which("nvcc") is None:
        return "nvcc not found (set CUDA_HOME)"
    return None


def _compile(variant: str):
    from torch.utils.cpp_extension import load

    name, sources, cflags, cuda_cflags, ldflags = _build_spec(variant)
    build_dir = extensions_dir() / name
    build_dir.mkdir(parents=True, exist_ok=True)
    # torch's own baton ("lock" file) is never released when its holder is killed; our flock is
    # released by the kernel, and while we hold it no cooperating process is building here, so a
    # leftover baton is stale and safe to remove.
    with open(build_dir.parent / f"{name}.flock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            kwargs = dict(name=name, sources=[str(s) for s in sources], extra_cflags=cflags,
                          extra_ldflags=ldflags, extra_include_paths=[str(_source_dir())],
                          build_directory=str(build_dir), verbose=False,
                          is_python_module=False)
            if variant == "cuda":
                kwargs.update(extra_cuda_cflags=cuda_cflags, with_cuda=True)
            try:
                load(**kwargs)
            except OSError:
                # A half-written library from an interrupted build: start this variant afresh.
                shutil.rmtree(build_dir, ignore_errors=True)
                build_dir.mkdir(parents=True, exist_ok=True)
                load(**kwargs)
            return getattr(torch.ops, name)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}"


def load_extension(device: torch.device | str | None = None):
    """The compiled kernel module for ``device`` (CPU or CUDA); raises RuntimeError with a one-line
    reason when it cannot be built. Built once per process, cached on disk across processes."""
    variant = _variant_of(device)
    with _lock:
        if variant in _modules:
            return _modules[variant]
        if variant == "cpu" and "cuda" in _modules:
            return _modules["cuda"]  # the CUDA build contains the CPU kernels too
        if variant in _failures:
            raise RuntimeError(_failures[variant])
        reason = _why_cuda_unbuildable() if variant == "cuda" else None
        if reason is None:
            try:
                _modules[variant] = _compile(variant)
                return _modules[variant]
            except Exception as exc:  # compiler missing, compile error, link error, ...
                reason = _one_line(exc)
        _failures[variant] = f"native {variant} kernels unavailable: {reason}"
        raise RuntimeError(_failures[variant])


def native_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the native kernels for ``device`` (default: CUDA if available, else CPU) build and
    load; ``(True, "")`` or ``(False, one-line reason)``. Never raises."""
    try:
        load_extension(device)
        return True, ""
    except RuntimeError as exc:
        return False, str(exc)


class _RasterizeCore(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means_c, tu_c, tv_c, opacities, colors, normals, Ks, width, height, tile):
        ext = load_extension(means_c.device)
        Ks = Ks.to(means_c.dtype)
        accum, median, final_T, last, med_pos, offsets, ids = ext.forward(
            means_c, tu_c, tv_c, opacities, colors, normals, Ks, width, height, tile)
        ctx.geometry = (width, height, tile)
        ctx.save_for_backward(means_c, tu_c, tv_c, opacities, colors, normals, Ks, offsets, ids,
                              final_T, last, med_pos)
        return accum, median

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_accum, grad_median):
        (means_c, tu_c, tv_c, opacities, colors, normals, Ks, offsets, ids, final_T, last,
         med_pos) = ctx.saved_tensors
        width, height, tile = ctx.geometry
        shape = final_T.shape
        if grad_accum is None:
            grad_accum = means_c.new_zeros((*shape, 9))
        if grad_median is None:
            grad_median = means_c.new_zeros(shape)
        ext = load_extension(means_c.device)
        grads = ext.backward(means_c, tu_c, tv_c, opacities, colors, normals, Ks, width, height,
                             tile, offsets, ids, final_T, last, med_pos, grad_accum, grad_median)
        return (*grads, None, None, None, None)


def rasterize_core_native(means_c: torch.Tensor, tu_c: torch.Tensor, tv_c: torch.Tensor,
                          opacities: torch.Tensor, colors: torch.Tensor, normals: torch.Tensor,
                          Ks: torch.Tensor, width: int, height: int, tile_size: int = 16,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite C cameras' surfels with the native kernels (docs/design.md §4, rasteriser core).

    Args:
        means_c: (C, N, 3) surfel centres in camera space (OpenCV axes, z forward).
        tu_c, tv_c: (C, N, 3) scaled tangent axes in camera space (rotation column * scale).
        opacities: (C, N) in [0, 1].
        colors: (C, N, 3) per-camera colours.
        normals: (C, N, 3) WORLD-space normals facing the camera (accumulated, not used in geometry).
        Ks: (C, 3, 3) intrinsics in pixels (not differentiated).
        width, height: image size in pixels; tile_size: square tile edge in pixels.

    Returns:
        accum: (C, H, W, 9) = [sum w c (3), sum w, sum w z, sum w z^2, sum w n (3)].
        median_depth: (C, H, W) z of the first added surfel after which T < 0.5 (0 if none);
            differentiable through that surfel's z.

    All per-surfel inputs must share dtype (float32 or float64) and device (CPU or CUDA); the
    gradient flows to means_c, tu_c, tv_c, opacities, colors and normals.
    Raises RuntimeError with a one-line reason when the kernels cannot be built.
    """
    if int(tile_size) <= 0 or int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width, height, tile_size must be positive, got {width}, {height}, "
                         f"{tile_size}")
    return _RasterizeCore.apply(means_c, tu_c, tv_c, opacities, colors, normals, Ks, int(width),
                                int(height), int(tile_size))
