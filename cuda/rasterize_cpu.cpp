// CPU implementation of recon4d's surfel rasteriser (forward and backward), parallel over tiles
// with OpenMP. The per-pixel maths lives in rasterize_common.h and is shared with the CUDA kernels.
//
// Forward, per (camera, tile): walk the tile's depth-sorted surfel list front to back; for every
// surfel, update all still-active pixels of the tile (surfel-outer, pixel-inner keeps the packed
// surfel record in registers and stops the tile as soon as every pixel has terminated).
// Backward, per (camera, tile): walk the list back to front, reconstructing each pixel's
// transmittance from the saved final value (T_i = T_{i+1} / (1 - alpha_i)), and sum each surfel's
// gradient over the tile's pixels into one slot per list entry. Slots are then reduced per surfel
// in a fixed order, so results do not depend on the thread count and there are no data races.
#include "rasterize.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>

#include "rasterize_common.h"

namespace recon4d {
namespace cpu {
namespace {

template <typename T>
struct Intrinsics {
  T fx, fy, cx, cy;
  explicit Intrinsics(const T* K) : fx(K[0]), fy(K[4]), cx(K[2]), cy(K[5]) {}
};

// Packed records (C*N*kPacked) and validity of every (camera, surfel).
template <typename T>
void pack_all(const T* means, const T* tu, const T* tv, const T* opacities, const T* colors,
              const T* normals, const T* Ks, int C, int N, int num_threads, std::vector<T>& packed,
              std::vector<uint8_t>& valid) {
  packed.assign(size_t(C) * N * kPacked, T(0));
  valid.assign(size_t(C) * N, 0);
  const int64_t total = int64_t(C) * N;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    const int c = int(i / N);
    const Intrinsics<T> k(Ks + 9 * c);
    valid[i] = pack_surfel(means + 3 * i, tu + 3 * i, tv + 3 * i, opacities[i], colors + 3 * i,
                           normals + 3 * i, k.fx, k.fy, k.cx, k.cy, packed.data() + kPacked * i)
                   ? 1
                   : 0;
  }
}

// Conservative pixel rectangle of every valid (camera, surfel); empty for culled ones.
template <typename T>
void compute_rects(const T* means, const T* tu, const T* tv, const T* Ks,
                   const std::vector<T>& packed, const std::vector<uint8_t>& valid, int C, int N,
                   int width, int height, int num_threads, std::vector<int32_t>& rects) {
  rects.assign(size_t(C) * N * 4, 0);
  const int64_t total = int64_t(C) * N;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    if (!valid[i]) continue;
    const int c = int(i / N);
    const Intrinsics<T> k(Ks + 9 * c);
    pixel_rect(means + 3 * i, tu + 3 * i, tv + 3 * i, packed.data() + kPacked * i, k.fx, k.fy,
               k.cx, k.cy, width, height, rects.data() + 4 * i);
  }
}

// Per-tile lists sorted by centre depth (ties by index): sort each camera's valid surfels once,
// then fill the tiles in that order.
template <typename T>
void bin_surfels(const std::vector<T>& packed, const std::vector<uint8_t>& valid,
                 const std::vector<int32_t>& rects, int C, int N, int width, int height, int tile,
                 std::vector<int32_t>& offsets, std::vector<int32_t>& ids) {
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  const int64_t total = int64_t(C) * N;
  std::vector<int32_t> trects(size_t(total) * 4, 0);
  for (int64_t i = 0; i < total; ++i) {
    if (valid[i]) tiles_of_rect(rects.data() + 4 * i, tile, trects.data() + 4 * i);
  }
  offsets.assign(size_t(C * n_tiles + 1), 0);
  std::vector<int64_t> counts(size_t(C * n_tiles), 0);
  for (int64_t i = 0; i < total; ++i) {
    const int c = int(i / N);
    const int32_t* r = trects.data() + 4 * i;
    for (int ty = r[2]; ty < r[3]; ++ty)
      for (int tx = r[0]; tx < r[1]; ++tx) ++counts[c * n_tiles + int64_t(ty) * tiles_x + tx];
  }
  int64_t running = 0;
  std::vector<int64_t> cursor(size_t(C * n_tiles), 0);
  for (int64_t t = 0; t < C * n_tiles; ++t) {
    offsets[t] = int32_t(running);
    cursor[t] = running;
    running += counts[t];
  }
  if (running > int64_t(INT32_MAX)) {
    throw std::runtime_error("recon4d rasteriser: more than 2^31 tile-surfel pairs; render fewer "
                             "cameras per call or a smaller image");
  }
  offsets[C * n_tiles] = int32_t(running);
  ids.assign(size_t(running), 0);
  std::vector<int32_t> order(N);
  for (int c = 0; c < C; ++c) {
    std::iota(order.begin(), order.end(), 0);
    const T* pc = packed.data() + size_t(c) * N * kPacked;
    std::stable_sort(order.begin(), order.end(), [pc](int32_t a, int32_t b) {
      return pc[size_t(a) * kPacked + kMz] < pc[size_t(b) * kPacked + kMz];
    });
    for (int32_t s : order) {
      const int32_t* r = trects.data() + 4 * (int64_t(c) * N + s);
      for (int ty = r[2]; ty < r[3]; ++ty)
        for (int tx = r[0]; tx < r[1]; ++tx)
          ids[cursor[c * n_tiles + int64_t(ty) * tiles_x + tx]++] = s;
    }
  }
}

}  // namespace

// Work item t (over C cameras x n_tiles tiles) -> its camera and tile origin, plus the pixel
// centres and camera-space ray directions (z = 1) of the tile's tile*tile pixels, row major.
// Forward and backward call the same function so both intersect exactly the same rays.
template <typename T>
int tile_rays(int64_t t, int64_t n_tiles, int tiles_x, int tile, const T* Ks, int& x0, int& y0,
              T* pxs, T* pys, T* dxs, T* dys) {
  const int c = int(t / n_tiles);
  const int tid = int(t % n_tiles);
  x0 = (tid % tiles_x) * tile;
  y0 = (tid / tiles_x) * tile;
  const Intrinsics<T> k(Ks + 9 * c);
  for (int q = 0; q < tile * tile; ++q) {
    pxs[q] = T(x0 + q % tile) + T(0.5);
    pys[q] = T(y0 + q / tile) + T(0.5);
    dxs[q] = (pxs[q] - k.cx) / k.fx;
    dys[q] = (pys[q] - k.cy) / k.fy;
  }
  return c;
}

template <typename T>
void rasterize_forward(const T* means, const T* tu, const T* tv, const T* opacities,
                       const T* colors, const T* normals, const T* Ks, int C, int N, int width,
                       int height, int tile, int num_threads, T* accum, T* median, T* final_T,
                       int32_t* last, int32_t* med_pos, std::vector<int32_t>& offsets,
                       std::vector<int32_t>& ids) {
  std::vector<T> packed;
  std::vector<uint8_t> valid;
  pack_all(means, tu, tv, opacities, colors, normals, Ks, C, N, num_threads, packed, valid);
  std::vector<int32_t> rects;
  compute_rects(means, tu, tv, Ks, packed, valid, C, N, width, height, num_threads, rects);
  bin_surfels(packed, valid, rects, C, N, width, height, tile, offsets, ids);
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  const int P = tile * tile;

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<T> Tp(P), acc(size_t(P) * kChannels), medz(P), pxs(P), pys(P), dxs(P), dys(P);
    std::vector<int32_t> lastp(P), medp(P);
    std::vector<uint8_t> done(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * n_tiles; ++t) {
      int x0, y0;
      const int c = tile_rays(t, n_tiles, tiles_x, tile, Ks, x0, y0, pxs.data(), pys.data(),
                              dxs.data(), dys.data());
      int active = 0;
      for (int q = 0; q < P; ++q) {
        const int x = x0 + q % tile, y = y0 + q / tile;
        Tp[q] = T(1);
        medz[q] = T(0);
        lastp[q] = 0;
        medp[q] = -1;
        done[q] = (x < width && y < height) ? 0 : 1;
        active += 1 - done[q];
      }
      std::fill(acc.begin(), acc.end(), T(0));
      const int32_t begin = offsets[t], end = offsets[t + 1];
      for (int32_t j = begin; j < end && active > 0; ++j) {
        const size_t row = size_t(c) * N + ids[j];
        const T* p = packed.data() + row * kPacked;
        const int32_t* r = rects.data() + 4 * row;  // only pixels that can have rho <= 9
        const int xa = std::max(r[0], x0) - x0, xb = std::min(r[1], x0 + tile) - x0;
        const int ya = std::max(r[2], y0) - y0, yb = std::min(r[3], y0 + tile) - y0;
        for (int yy = ya; yy < yb; ++yy) {
          for (int q = yy * tile + xa; q < yy * tile + xb; ++q) {
            if (done[q]) continue;
            Hit<T> h;
            if (!eval_pair(p, pxs[q], pys[q], dxs[q], dys[q], h)) continue;
            const T next = Tp[q] * (T(1) - h.alpha);
            if (next < T(kTMin)) {  // early termination: this surfel is not added
              done[q] = 1;
              --active;
              continue;
            }
            const T w = h.alpha * Tp[q];
            T* a = acc.data() + size_t(q) * kChannels;
            a[0] += w * p[kColor];
            a[1] += w * p[kColor + 1];
            a[2] += w * p[kColor + 2];
            a[3] += w;
            a[4] += w * h.z;
            a[5] += w * h.z * h.z;
            a[6] += w * p[kNormal];
            a[7] += w * p[kNormal + 1];
            a[8] += w * p[kNormal + 2];
            if (medp[q] < 0 && next < T(kTMedian)) {
              medp[q] = j - begin;
              medz[q] = h.z;
            }
            Tp[q] = next;
            lastp[q] = j - begin + 1;
          }
        }
      }
      for (int q = 0; q < P; ++q) {
        const int x = x0 + q % tile, y = y0 + q / tile;
        if (x >= width || y >= height) continue;
        const int64_t pix = (int64_t(c) * height + y) * width + x;
        std::memcpy(accum + pix * kChannels, acc.data() + size_t(q) * kChannels,
                    sizeof(T) * kChannels);
        median[pix] = medz[q];
        final_T[pix] = Tp[q];
        last[pix] = lastp[q];
        med_pos[pix] = medp[q];
      }
    }
  }
}

template <typename T>
void rasterize_backward(const T* means, const T* tu, const T* tv, const T* opacities,
                        const T* colors, const T* normals, const T* Ks, int C, int N, int width,
                        int height, int tile, int num_threads, const int32_t* offsets,
                        const int32_t* ids, const T* final_T, const int32_t* last,
                        const int32_t* med_pos, const T* grad_accum, const T* grad_median,
                        T* g_means, T* g_tu, T* g_tv, T* g_opacities, T* g_colors, T* g_normals) {
  std::vector<T> packed;
  std::vector<uint8_t> valid;
  pack_all(means, tu, tv, opacities, colors, normals, Ks, C, N, num_threads, packed, valid);
  std::vector<int32_t> rects;
  compute_rects(means, tu, tv, Ks, packed, valid, C, N, width, height, num_threads, rects);
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  const int P = tile * tile;
  const int64_t n_entries = offsets[C * n_tiles];
  std::vector<T> slots(size_t(n_entries) * kPacked, T(0));

#pragma omp parallel num_threads(num_threads)
  {
    std::vector<T> Tp(P), accG(P), G(size_t(P) * kChannels), Gmed(P), pxs(P), pys(P), dxs(P),
        dys(P);
    std::vector<int32_t> lastp(P), medp(P);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < C * n_tiles; ++t) {
      int x0, y0;
      const int c = tile_rays(t, n_tiles, tiles_x, tile, Ks, x0, y0, pxs.data(), pys.data(),
                              dxs.data(), dys.data());
      int max_last = 0;
      for (int q = 0; q < P; ++q) {
        const int x = x0 + q % tile, y = y0 + q / tile;
        accG[q] = T(0);
        if (x >= width || y >= height) {
          lastp[q] = 0;
          continue;
        }
        const int64_t pix = (int64_t(c) * height + y) * width + x;
        Tp[q] = final_T[pix];
        lastp[q] = last[pix];
        medp[q] = med_pos[pix];
        Gmed[q] = grad_median[pix];
        std::memcpy(G.data() + size_t(q) * kChannels, grad_accum + pix * kChannels,
                    sizeof(T) * kChannels);
        max_last = std::max(max_last, lastp[q]);
      }
      const int32_t begin = offsets[t];
      for (int32_t jj = max_last - 1; jj >= 0; --jj) {
        const size_t row = size_t(c) * N + ids[begin + jj];
        const T* p = packed.data() + row * kPacked;
        const int32_t* r = rects.data() + 4 * row;
        const int xa = std::max(r[0], x0) - x0, xb = std::min(r[1], x0 + tile) - x0;
        const int ya = std::max(r[2], y0) - y0, yb = std::min(r[3], y0 + tile) - y0;
        T g[kPacked] = {};
        bool any = false;
        for (int yy = ya; yy < yb; ++yy) {
          for (int q = yy * tile + xa; q < yy * tile + xb; ++q) {
            if (jj >= lastp[q]) continue;
            Hit<T> h;
            if (!eval_pair(p, pxs[q], pys[q], dxs[q], dys[q], h)) continue;
            any = true;
            const T one_minus = T(1) - h.alpha;
            const T Ti = Tp[q] / one_minus;  // transmittance in front of this surfel
            const T w = h.alpha * Ti;
            const T* Gq = G.data() + size_t(q) * kChannels;
            const T Gf = Gq[0] * p[kColor] + Gq[1] * p[kColor + 1] + Gq[2] * p[kColor + 2] + Gq[3] +
                         Gq[4] * h.z + Gq[5] * h.z * h.z + Gq[6] * p[kNormal] +
                         Gq[7] * p[kNormal + 1] + Gq[8] * p[kNormal + 2];
            const T dL_dalpha = Ti * Gf - accG[q] / one_minus;
            accG[q] += w * Gf;
            Tp[q] = Ti;
            for (int kk = 0; kk < 3; ++kk) {
              g[kColor + kk] += w * Gq[kk];
              g[kNormal + kk] += w * Gq[6 + kk];
            }
            T dL_dz = w * (Gq[4] + T(2) * h.z * Gq[5]);
            if (medp[q] == jj) dL_dz += Gmed[q];
            pair_geometry_grad(p, h, pxs[q], pys[q], dxs[q], dys[q], dL_dalpha, dL_dz, g);
          }
        }
        if (any) std::memcpy(slots.data() + size_t(begin + jj) * kPacked, g, sizeof(g));
      }
    }
  }

  // Reduce the entry slots per surfel in list order (deterministic), then apply the chain rule.
  std::vector<T> per_surfel(size_t(C) * N * kPacked, T(0));
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int c = 0; c < C; ++c) {
    for (int64_t e = offsets[c * n_tiles]; e < offsets[(c + 1) * n_tiles]; ++e) {
      T* dst = per_surfel.data() + (size_t(c) * N + ids[e]) * kPacked;
      const T* src = slots.data() + size_t(e) * kPacked;
      for (int kk = 0; kk < kPacked; ++kk) dst[kk] += src[kk];
    }
  }
  const int64_t total = int64_t(C) * N;
#pragma omp parallel for num_threads(num_threads) schedule(static)
  for (int64_t i = 0; i < total; ++i) {
    if (!valid[i]) continue;
    const int c = int(i / N);
    const Intrinsics<T> k(Ks + 9 * c);
    unpack_grad(means + 3 * i, tu + 3 * i, tv + 3 * i, per_surfel.data() + kPacked * i, k.fx,
                k.fy, g_means + 3 * i, g_tu + 3 * i, g_tv + 3 * i, g_opacities + i,
                g_colors + 3 * i, g_normals + 3 * i);
  }
}

#define R4D_INSTANTIATE(T)                                                                        \
  template void rasterize_forward<T>(const T*, const T*, const T*, const T*, const T*, const T*,  \
                                     const T*, int, int, int, int, int, int, T*, T*, T*, int32_t*, \
                                     int32_t*, std::vector<int32_t>&, std::vector<int32_t>&);     \
  template void rasterize_backward<T>(const T*, const T*, const T*, const T*, const T*, const T*, \
                                      const T*, int, int, int, int, int, int, const int32_t*,     \
                                      const int32_t*, const T*, const int32_t*, const int32_t*,   \
                                      const T*, const T*, T*, T*, T*, T*, T*, T*);
R4D_INSTANTIATE(float)
R4D_INSTANTIATE(double)
#undef R4D_INSTANTIATE

}  // namespace cpu
}  // namespace recon4d
