"""The reference rasteriser core: tiled, pure PyTorch, differentiable by autograd.

It implements step 4 of the renderer spec (docs/render.md) exactly; the native kernels are tested
against it and it is tested against the dense float64 oracle in ``brute_force.py``.

Layout. Every (camera, surfel) that survives the near-plane cull is listed in every 16x16 tile
its conservative screen box overlaps. The (tile, surfel) pairs are sorted by tile, then by camera
depth (ties by surfel index). Tiles are processed in batches of similar list length: a batch is a
dense (B tiles, P pixels, K surfels) block, padded with a transparent dummy surfel, so the whole
per-pixel rule (ray-surfel intersection, low-pass fallback, 3-sigma cut, alpha clamp, front-to-back
compositing with early termination, median depth) is a handful of vectorised tensor ops and
``cumprod`` along K. Large blocks are wrapped in activation checkpointing so backward memory stays
bounded (the block is recomputed in backward instead of keeping ~20 (B, P, K) intermediates).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

NEAR = 0.01
"""Surfels whose camera-space centre has z < NEAR are culled."""
DET_EPS = 1e-12
"""|det| of the ray-surfel system below this: degenerate (ray inside the surfel's plane)."""
RHO_CUT = 9.0
"""Squared Mahalanobis cut (3 sigma)."""
ALPHA_MAX = 0.99
ALPHA_MIN = 1.0 / 255.0
T_MIN = 1e-4
"""Early termination: a surfel that would bring transmittance below this is not added."""

BLOCK_ELEMENTS = 1 << 21
"""Target size (B * P * K) of one dense block; bounds the working memory of one block."""
CHECKPOINT_ELEMENTS = 1 << 23
"""Above this many pixel-surfel pairs in total, blocks are checkpointed to bound backward memory."""

# Columns of the per-(camera, surfel) feature table gathered into each block.
_F_NVEC, _F_PU, _F_PV = slice(0, 3), slice(3, 6), slice(6, 9)
_F_NM, _F_QX, _F_QY, _F_MZ, _F_OPAC = 9, 10, 11, 12, 13
_F_PAYLOAD = slice(14, 20)  # colour (3) + normal (3): the per-surfel values that are composited
_NUM_F = 20


def _surfel_table(means_c: Tensor, tu_c: Tensor, tv_c: Tensor, opacities: Tensor,
                  colors: Tensor, normals: Tensor, Ks: Tensor, valid: Tensor) -> Tensor:
    """Per (camera, surfel) quantities that make the per-pixel intersection a few dot products.

    For the ray d = (dx, dy, 1) the system u*tu + v*tv - z*d = -m has (Cramer's rule, triple
    products rearranged) det = -n.d with n = tu x tv, and
        u = -((m x tv).d) / (n.d),  v = -((tu x m).d) / (n.d),  z = (n.m) / (n.d).
    So per surfel we keep n, m x tv, tu x m and n.m; per pixel only dot products with d remain.

    Returns (C*N + 1, 20): the last row is a transparent dummy used to pad blocks.
    """
    nvec = torch.linalg.cross(tu_c, tv_c, dim=-1)
    pu = torch.linalg.cross(means_c, tv_c, dim=-1)
    pv = torch.linalg.cross(tu_c, means_c, dim=-1)
    nm = (nvec * means_c).sum(-1, keepdim=True)
    mz = means_c[..., 2:3]
    # Culled surfels never reach a block; a safe depth keeps their (unused) rows finite so that
    # zero upstream gradients do not turn into 0 * inf = NaN.
    mz_safe = torch.where(valid.unsqueeze(-1), mz, torch.ones_like(mz))
    fx, fy = Ks[:, 0, 0].view(-1, 1, 1), Ks[:, 1, 1].view(-1, 1, 1)
    cx, cy = Ks[:, 0, 2].view(-1, 1, 1), Ks[:, 1, 2].view(-1, 1, 1)
    qx = fx * means_c[..., 0:1] / mz_safe + cx
    qy = fy * means_c[..., 1:2] / mz_safe + cy
    table = torch.cat([nvec, pu, pv, nm, qx, qy, mz_safe, opacities.unsqueeze(-1), colors, normals],
                      dim=-1)
    table = table.reshape(-1, _NUM_F)
    pad = torch.zeros(1, _NUM_F, dtype=table.dtype, device=table.device)
    return torch.cat([table, pad], dim=0)


@torch.no_grad()
def _tile_ranges(means_c: Tensor, tu_c: Tensor, tv_c: Tensor, Ks: Tensor, width: int, height: int,
                 tile_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Conservative tile rectangle [tx0, tx1] x [ty0, ty1] of every (camera, surfel).

    The box of the projected corners m +- 3 tu +- 3 tv (the 3-sigma parallelogram contains every
    point with rho3d <= 9) united with q +- 3 px (rho2d <= 9 means |p - q| <= 2.13 px), plus one
    pixel of margin against rounding. A corner in front of the near plane makes the projection
    unbounded: such surfels cover the whole image. Returns int64 (C, N) tensors and the validity
    mask (not culled and overlapping the image).
    """
    ntx = (width + tile_size - 1) // tile_size
    nty = (height + tile_size - 1) // tile_size
    fx, fy = Ks[:, 0, 0].view(-1, 1, 1), Ks[:, 1, 1].view(-1, 1, 1)
    cx, cy = Ks[:, 0, 2].view(-1, 1, 1), Ks[:, 1, 2].view(-1, 1, 1)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]],
                         dtype=means_c.dtype, device=means_c.device) * 3.0
    corners = (means_c.unsqueeze(2) + signs[:, 0].view(1, 1, 4, 1) * tu_c.unsqueeze(2)
               + signs[:, 1].view(1, 1, 4, 1) * tv_c.unsqueeze(2))  # (C, N, 4, 3)
    mz = means_c[..., 2]
    valid = mz >= NEAR
    cz = corners[..., 2]
    unbounded = (cz < NEAR).any(-1)
    cz_safe = torch.where(cz < NEAR, torch.ones_like(cz), cz)
    px = fx * corners[..., 0] / cz_safe + cx
    py = fy * corners[..., 1] / cz_safe + cy
    mz_safe = torch.where(valid, mz, torch.ones_like(mz))
    qx = fx[..., 0] * means_c[..., 0] / mz_safe + cx[..., 0]
    qy = fy[..., 0] * means_c[..., 1] / mz_safe + cy[..., 0]
    margin = 3.0 + 1.0
    xmin = torch.minimum(px.amin(-1), qx - margin) - 1.0
    xmax = torch.maximum(px.amax(-1), qx + margin) + 1.0
    ymin = torch.minimum(py.amin(-1), qy - margin) - 1.0
    ymax = torch.maximum(py.amax(-1), qy + margin) + 1.0
    big = float(max(width, height) * 4 + 64)
    xmin = torch.where(unbounded, torch.full_like(xmin, -big), xmin)
    ymin = torch.where(unbounded, torch.full_like(ymin, -big), ymin)
    xmax = torch.where(unbounded, torch.full_like(xmax, big), xmax)
    ymax = torch.where(unbounded, torch.full_like(ymax, big), ymax)
    # Clamp before the integer cast so huge/NaN-free floats stay in int64 range.
    xmin, xmax = xmin.clamp(-big, big), xmax.clamp(-big, big)
    ymin, ymax = ymin.clamp(-big, big), ymax.clamp(-big, big)
    valid = valid & (xmax >= 0) & (ymax >= 0) & (xmin < width) & (ymin < height)
    tx0 = torch.floor(xmin / tile_size).long().clamp(0, ntx - 1)
    tx1 = torch.floor(xmax / tile_size).long().clamp(0, ntx - 1)
    ty0 = torch.floor(ymin / tile_size).long().clamp(0, nty - 1)
    ty1 = torch.floor(ymax / tile_size).long().clamp(0, nty - 1)
    return tx0, tx1, ty0, ty1, valid


@torch.no_grad()
def _tile_lists(means_c: Tensor, tu_c: Tensor, tv_c: Tensor, Ks: Tensor, width: int, height: int,
                tile_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted (tile, surfel) pairs.

    Returns:
        pair_tile: (M,) global tile id (camera * tiles_per_image + ty * ntx + tx), ascending.
        pair_row: (M,) row of the surfel table (camera * N + surfel), depth-sorted within a tile.
        valid: (C, N) surfels that survive the near cull and touch the image.
    """
    num_cams, num = means_c.shape[:2]
    ntx = (width + tile_size - 1) // tile_size
    nty = (height + tile_size - 1) // tile_size
    tx0, tx1, ty0, ty1, valid = _tile_ranges(means_c, tu_c, tv_c, Ks, width, height, tile_size)
    device = means_c.device
    rows = torch.nonzero(valid.reshape(-1), as_tuple=False).squeeze(1)
    if rows.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, valid
    span_x = (tx1 - tx0 + 1).reshape(-1)[rows]
    span_y = (ty1 - ty0 + 1).reshape(-1)[rows]
    counts = span_x * span_y
    pair_row = torch.repeat_interleave(rows, counts)
    starts = torch.cumsum(counts, 0) - counts
    offset = torch.arange(pair_row.numel(), device=device) - torch.repeat_interleave(starts, counts)
    sx = torch.repeat_interleave(span_x, counts)
    tx = tx0.reshape(-1)[pair_row] + offset % sx
    ty = ty0.reshape(-1)[pair_row] + offset // sx
    cam = pair_row // num
    pair_tile = cam * (ntx * nty) + ty * ntx + tx
    # Depth rank of each table row (per camera, ties by index): stable sort by depth, then by
    # camera, keeps both orders; sorting pairs by (tile, rank) then gives the spec's order.
    depth = means_c[..., 2].reshape(-1)
    order = torch.sort(depth, stable=True).indices
    order = order[torch.sort(order // num, stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device)
    key = pair_tile * (num_cams * num) + rank[pair_row]
    perm = torch.sort(key).indices
    return pair_tile[perm], pair_row[perm], valid


def _composite_block(feat: Tensor, pix: Tensor, kparams: Tensor) -> tuple[Tensor, Tensor]:
    """The per-pixel rule on one dense block.

    Args:
        feat: (B, K, 20) gathered surfel rows, depth-sorted along K (padding rows transparent).
        pix: (B, P, 2) pixel centres (x + 0.5, y + 0.5) in pixels.
        kparams: (B, 4) fx, fy, cx, cy of each tile's camera.
    Returns:
        accum (B, P, 9) and median depth (B, P).
    The work is dominated by (B, P, K) elementwise ops, so the formulation keeps their number
    small: the three dot products with the ray are one batched matmul, rho2d one ``cdist``.
    """
    num_k = feat.shape[1]
    fx, fy, cx, cy = (k.view(-1, 1) for k in kparams.unbind(-1))
    ray = torch.stack([(pix[..., 0] - cx) / fx, (pix[..., 1] - cy) / fy,
                       torch.ones_like(pix[..., 0])], dim=-1)  # (B, P, 3) = d
    dots = torch.bmm(ray, feat[..., 0:9].transpose(1, 2).reshape(-1, 3, 3, num_k)
                     .transpose(1, 2).reshape(-1, 3, 3 * num_k))  # (B, P, 3K)
    dn, num_u, num_v = dots[..., :num_k], dots[..., num_k:2 * num_k], dots[..., 2 * num_k:]
    # u = -num_u / dn, v = -num_v / dn, so rho3d = (num_u^2 + num_v^2) / dn^2. rho3d only
    # matters where it is <= 9 (otherwise the pixel takes rho2d or is cut either way), so it is
    # +inf there as in the degenerate case; every value that reaches autograd stays bounded.
    dn2 = dn * dn
    r = num_u * num_u + num_v * num_v
    # Only a hit in front of the camera (z = C / dn > 0) counts: a surfel straddling the near
    # plane drew a mirrored ghost where the rays meet its plane behind the camera.
    ok3d = (dn.abs() >= DET_EPS) & (r <= RHO_CUT * dn2) & (feat[..., _F_NM].unsqueeze(1) * dn > 0)
    rho3d = torch.where(ok3d, r / torch.where(ok3d, dn2, torch.ones_like(dn2)), math.inf)
    z3d = feat[..., _F_NM].unsqueeze(1) / torch.where(ok3d, dn, torch.ones_like(dn))
    dist = torch.cdist(pix, feat[..., _F_QX:_F_QY + 1],
                       compute_mode="donot_use_mm_for_euclid_dist")  # exact |p - q|
    rho2d = 2.0 * dist * dist
    use3d = rho3d <= rho2d
    rho = torch.where(use3d, rho3d, rho2d)
    z = torch.where(use3d, z3d, feat[..., _F_MZ].unsqueeze(1))
    inside = rho <= RHO_CUT
    # exp of the cut-off rho would be denormal for far pairs (very slow on CPUs): use 0 there.
    gauss = torch.exp(-0.5 * torch.where(inside, rho, 0.0))
    alpha = (feat[..., _F_OPAC].unsqueeze(1) * gauss).clamp_max(ALPHA_MAX)
    alpha = torch.where(inside & (alpha >= ALPHA_MIN), alpha, 0.0)

    # Front to back: T after surfel i is the running product of (1 - alpha). Transmittance never
    # increases, so "stop at the first surfel that would bring T below T_MIN" is the same as
    # "keep exactly the surfels whose T-after stays >= T_MIN". The differentiable product then
    # multiplies 1 instead of (1 - alpha) after termination: identical values where they are
    # used, and no denormal transmittances deep in long lists (which slow CPU arithmetic ~50x).
    with torch.no_grad():
        kept = torch.cumprod(1.0 - alpha, dim=-1) >= T_MIN
    t_after = torch.cumprod(torch.where(kept, 1.0 - alpha, 1.0), dim=-1)
    t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
    weight = torch.where(kept, alpha * t_before, 0.0)

    payload = torch.bmm(weight, feat[..., _F_PAYLOAD])  # (B, P, 6): colour, normal
    wz = weight * z
    accum = torch.cat([payload[..., 0:3], weight.sum(-1, keepdim=True), wz.sum(-1, keepdim=True),
                       (wz * z).sum(-1, keepdim=True), payload[..., 3:6]], dim=-1)

    crossed = kept & (t_after < 0.5)
    first = crossed.to(torch.uint8).argmax(dim=-1, keepdim=True)  # first True (0 if none)
    median = torch.where(crossed.any(-1), z.gather(-1, first).squeeze(-1), 0.0)
    return accum, median


def rasterize_core_reference(means_c: Tensor, tu_c: Tensor, tv_c: Tensor, opacities: Tensor,
                             colors: Tensor, normals: Tensor, Ks: Tensor, width: int, height: int,
                             tile_size: int = 16) -> tuple[Tensor, Tensor]:
    """Composite C camera-space surfel sets into C images (spec step 4), by autograd.

    Args:
        means_c: (C, N, 3) surfel centres, camera space (OpenCV, z forward).
        tu_c, tv_c: (C, N, 3) scaled tangent axes, camera space.
        opacities: (C, N) in [0, 1].
        colors: (C, N, 3) colours.
        normals: (C, N, 3) normals (any frame; composited as given, world space in recon4d).
        Ks: (C, 3, 3) intrinsics, pixels.
        width, height: image size; tile_size: tile edge in pixels.
    Returns:
        accum: (C, H, W, 9) = [sum w c (3), sum w (alpha), sum w z, sum w z^2, sum w n (3)].
        median_depth: (C, H, W) z of the first added surfel after which T < 0.5, else 0.
    Differentiable w.r.t. every float input (Ks included); median depth through the z it picks.
    """
    num_cams, num = means_c.shape[:2]
    width, height, tile_size = int(width), int(height), int(tile_size)
    ntx = (width + tile_size - 1) // tile_size
    nty = (height + tile_size - 1) // tile_size
    tiles_per_image = ntx * nty
    npix = tile_size * tile_size
    dtype, device = means_c.dtype, means_c.device

    pair_tile, pair_row, valid = _tile_lists(means_c, tu_c, tv_c, Ks, width, height, tile_size)
    accum_tiles = torch.zeros(num_cams * tiles_per_image, npix, 9, dtype=dtype, device=device)
    median_tiles = torch.zeros(num_cams * tiles_per_image, npix, dtype=dtype, device=device)

    if pair_tile.numel() > 0:
        table = _surfel_table(means_c, tu_c, tv_c, opacities, colors, normals, Ks, valid)
        pad_row = table.shape[0] - 1
        tiles, counts = torch.unique_consecutive(pair_tile, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        # Longest lists first, so every block holds lists of similar length (little padding).
        by_len = torch.sort(counts, descending=True, stable=True).indices
        tiles, counts, starts = tiles[by_len], counts[by_len], starts[by_len]
        counts_list = counts.tolist()
        use_ckpt = torch.is_grad_enabled() and (
            sum(counts_list) * npix > CHECKPOINT_ELEMENTS)

        local = torch.arange(npix, device=device)
        local_xy = torch.stack([(local % tile_size), (local // tile_size)], -1).to(dtype) + 0.5
        kflat = torch.stack([Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]], -1)  # (C, 4)

        out_tiles, out_accum, out_median = [], [], []
        begin = 0
        while begin < len(counts_list):
            kmax = counts_list[begin]
            batch = max(1, BLOCK_ELEMENTS // (kmax * npix))
            end = min(len(counts_list), begin + batch)
            b_tiles = tiles[begin:end]
            b_idx = starts[begin:end].unsqueeze(1) + torch.arange(kmax, device=device)
            in_list = torch.arange(kmax, device=device) < counts[begin:end].unsqueeze(1)
            b_rows = torch.where(in_list, pair_row[b_idx.clamp_max(pair_row.numel() - 1)],
                                 torch.full_like(b_idx, pad_row))
            feat = table[b_rows]  # (B, K, 20)
            cam = b_tiles // tiles_per_image
            tloc = b_tiles % tiles_per_image
            origin = torch.stack([(tloc % ntx) * tile_size, (tloc // ntx) * tile_size], -1)
            pix = origin.to(dtype).unsqueeze(1) + local_xy  # (B, P, 2)
            kparams = kflat[cam]
            if use_ckpt:
                acc, med = checkpoint(_composite_block, feat, pix, kparams, use_reentrant=False)
            else:
                acc, med = _composite_block(feat, pix, kparams)
            out_tiles.append(b_tiles)
            out_accum.append(acc)
            out_median.append(med)
            begin = end
        idx = torch.cat(out_tiles)
        accum_tiles = accum_tiles.index_copy(0, idx, torch.cat(out_accum))
        median_tiles = median_tiles.index_copy(0, idx, torch.cat(out_median))

    else:
        # Nothing visible: keep the outputs connected to the inputs so that backward still runs
        # (and yields zero gradients) instead of failing on a graph-less result.
        anchor = sum(t.sum() for t in (means_c, tu_c, tv_c, opacities, colors, normals)) * 0.0
        accum_tiles = accum_tiles + anchor
        median_tiles = median_tiles + anchor

    def untile(x: Tensor) -> Tensor:
        x = x.reshape(num_cams, nty, ntx, tile_size, tile_size, -1)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(num_cams, nty * tile_size, ntx * tile_size, -1)
        return x[:, :height, :width]

    return untile(accum_tiles), untile(median_tiles.unsqueeze(-1)).squeeze(-1)
