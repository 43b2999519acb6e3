"""A small PNG line-chart writer (Pillow only): metrics over time, one panel per metric group.

matplotlib is not a dependency of recon4d; this draws axes, ticks, lines with markers and a
legend, which is all the evaluation plot needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


@dataclass
class Panel:
    """One chart: a title, an x-axis label and named series of (x, y) points (y None = gap)."""

    title: str
    xlabel: str = "frame"
    series: dict[str, tuple[list[float], list[float | None]]] = field(default_factory=dict)


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    import math

    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    out, v = [], start
    while v <= hi + 1e-9 * step:
        if v >= lo - 1e-9 * step:
            out.append(v)
        v += step
    return out or [lo, hi]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    if abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4f}".rstrip("0").rstrip(".")


def _draw_panel(draw, font, box, panel: Panel) -> None:
    x0, y0, x1, y1 = box
    left, right, top, bottom = x0 + 60, x1 - 12, y0 + 26, y1 - 40
    draw.text((x0 + 8, y0 + 6), panel.title, fill=(0, 0, 0), font=font)
    xs = [x for xs_, ys_ in panel.series.values() for x, y in zip(xs_, ys_) if y is not None]
    ys = [y for xs_, ys_ in panel.series.values() for y in ys_ if y is not None]
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    if not ys:
        draw.text((left + 10, (top + bottom) // 2), "no data", fill=(120, 120, 120), font=font)
        return
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(ys), max(ys)
    pad = 0.08 * (yhi - ylo) if yhi > ylo else max(abs(ylo) * 0.05, 1e-3)
    ylo, yhi = ylo - pad, yhi + pad
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1

    def px(x, y):
        return (left + (x - xlo) / (xhi - xlo) * (right - left),
                bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    for t in _ticks(ylo, yhi):
        _, yy = px(xlo, t)
        draw.line((left, yy, right, yy), fill=(230, 230, 230))
        draw.text((x0 + 4, yy - 6), _fmt(t), fill=(60, 60, 60), font=font)
    for t in _ticks(xlo, xhi, 7):
        xx, _ = px(t, ylo)
        draw.line((xx, bottom, xx, bottom + 4), fill=(0, 0, 0))
        draw.text((xx - 8, bottom + 6), _fmt(t), fill=(60, 60, 60), font=font)
    draw.text(((left + right) // 2 - 15, bottom + 22), panel.xlabel, fill=(0, 0, 0), font=font)
    legend_y = top + 4
    for k, (name, (sx, sy)) in enumerate(panel.series.items()):
        colour = COLOURS[k % len(COLOURS)]
        run = []
        for x, y in zip(sx, sy):
            if y is None:
                if len(run) > 1:
                    draw.line(run, fill=colour, width=2)
                run = []
                continue
            p = px(x, y)
            run.append(p)
            draw.ellipse((p[0] - 2.5, p[1] - 2.5, p[0] + 2.5, p[1] + 2.5), fill=colour)
        if len(run) > 1:
            draw.line(run, fill=colour, width=2)
        draw.rectangle((right - 150, legend_y + 3, right - 140, legend_y + 11), fill=colour)
        draw.text((right - 135, legend_y), name, fill=(0, 0, 0), font=font)
        legend_y += 14


def plot_panels(panels: list[Panel], path: str | Path, title: str = "", columns: int = 2,
                panel_size: tuple[int, int] = (520, 300)) -> Path:
    """Write the panels in a grid to ``path`` (PNG, atomically)."""
    from PIL import Image, ImageDraw, ImageFont

    from recon4d.utils.atomic import atomic_path

    columns = max(1, min(columns, len(panels)))
    rows = (len(panels) + columns - 1) // columns
    import textwrap

    title_lines = textwrap.wrap(title, width=columns * panel_size[0] // 7) if title else []
    head = 10 + 16 * len(title_lines) if title_lines else 0
    w, h = panel_size
    image = Image.new("RGB", (columns * w, rows * h + head), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for k, line in enumerate(title_lines):
        draw.text((10, 8 + 16 * k), line, fill=(0, 0, 0), font=font)
    for i, panel in enumerate(panels):
        r, c = divmod(i, columns)
        _draw_panel(draw, font, (c * w, head + r * h, (c + 1) * w, head + (r + 1) * h), panel)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def plot_eval(result: dict, path: str | Path) -> Path:
    """Metrics over time of an :func:`recon4d.eval.evaluate_run` result, one panel per group."""
    held = result.get("heldout", {})
    panels = [Panel("PSNR (dB) over white", series={
        "held-out frames": (held.get("frames", []), held.get("psnr", []))})]
    ssim_panel = Panel("SSIM", series={"held-out frames": (held.get("frames", []), held.get("ssim", []))})
    novel = result.get("novel_view")
    if novel:
        panels[0].series["novel views (mean)"] = (novel["frames"], novel["psnr_per_frame"])
        ssim_panel.series["novel views (mean)"] = (novel["frames"], novel["ssim_per_frame"])
    panels.append(ssim_panel)
    geo = result.get("geometry", {})
    anim = result.get("animated", {})
    if geo.get("frames") and geo.get("chamfer_l1"):
        cham = Panel("Chamfer-L1 / bbox diagonal",
                     series={"per-frame mesh": (geo["frames"], geo["chamfer_l1"])})
        fs = Panel("F-score @1% and normal consistency", series={
            "F-score (per-frame mesh)": (geo["frames"], geo["fscore"]),
            "normal consistency": (geo["frames"], geo["normal_consistency"])})
        if anim.get("chamfer_l1"):
            cham.series["animated mesh"] = (anim["frames"], anim["chamfer_l1"])
            fs.series["F-score (animated)"] = (anim["frames"], anim["fscore"])
        panels += [cham, fs]
    temporal = result.get("temporal", {})
    if temporal.get("jitter_per_frame"):
        frames = list(range(1, len(temporal["jitter_per_frame"]) + 1))
        jp = Panel("vertex jitter |x[t+1]-2x[t]+x[t-1]| / diag", series={
            "animated mesh": (frames, temporal["jitter_per_frame"])})
        if temporal.get("jitter_gt_per_frame"):
            jp.series["ground truth"] = (frames, temporal["jitter_gt_per_frame"])
        panels.append(jp)
    summary = result.get("summary", {})
    title = "recon4d eval: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if v is not None)
    return plot_panels(panels, path, title=title)


def save_pairs(pairs, path: str | Path, columns: int = 2) -> Path:
    """Held-out frames side by side: ground truth | render, one (target, render) pair per row
    group, ``columns`` pairs per row; images (H, W, 3) in [0, 1]."""
    import numpy as np
    from PIL import Image

    from recon4d.utils.atomic import atomic_path

    if not pairs:
        image = np.ones((8, 8, 3))
    else:
        h, w = pairs[0][0].shape[:2]
        rows = (len(pairs) + columns - 1) // columns
        image = np.ones((rows * h, columns * 2 * w, 3))
        for k, (target, render) in enumerate(pairs):
            r, c = divmod(k, columns)
            image[r * h:(r + 1) * h, c * 2 * w:c * 2 * w + w] = target
            image[r * h:(r + 1) * h, c * 2 * w + w:(c + 1) * 2 * w] = render
    with atomic_path(path) as tmp:
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")
    return Path(path)
