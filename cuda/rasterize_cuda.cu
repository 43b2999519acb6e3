// CUDA implementation of recon4d's surfel rasteriser (forward and backward): the algorithm of
// rasterize_cpu.cpp, with the per-pixel maths shared through rasterize_common.h.
//
// Forward:  preprocess (one thread per camera-surfel: packed record, tile rectangle, tile count)
//           -> duplicate each surfel once per overlapped tile with the key
//              (camera * tiles + tile) << 32 | depth rank  (rank = stable sort by centre depth)
//           -> one radix sort of the keys gives every tile's list in the spec's order
//           -> one block per tile, one thread per pixel; the tile's list is streamed through
//              shared memory in batches, and the block stops once every pixel has terminated.
// Backward: one block per tile walks its list back to front (batches in shared memory); every
//           thread reconstructs its pixel's transmittance (T_i = T_{i+1} / (1 - alpha_i)) and
//           forms its pair gradient w.r.t. the packed record; a warp reduction then one atomicAdd
//           per warp and value accumulate per-surfel record gradients, and a final per-surfel
//           kernel applies the chain rule to the inputs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include <vector>

#include "rasterize_common.h"
#include "rasterize_cuda.h"

namespace recon4d {
namespace cuda {
namespace {

constexpr int kBatch = 128;  // surfels per shared-memory batch (20 * 8 B * 128 = 20 KiB in fp64)

inline int round_up_warp(int n) { return (n + 31) / 32 * 32; }

template <typename T>
__global__ void preprocess_kernel(const T* __restrict__ means, const T* __restrict__ tu,
                                  const T* __restrict__ tv, const T* __restrict__ opacities,
                                  const T* __restrict__ colors, const T* __restrict__ normals,
                                  const T* __restrict__ Ks, int C, int N, int width, int height,
                                  int tile, T* __restrict__ packed, int* __restrict__ rects,
                                  int64_t* __restrict__ counts) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(C) * N) return;
  const int c = int(i / N);
  const T* K = Ks + 9 * c;
  T* p = packed + kPacked * i;
  int* r = rects + 4 * i;
  counts[i] = 0;
  if (!pack_surfel(means + 3 * i, tu + 3 * i, tv + 3 * i, opacities[i], colors + 3 * i,
                   normals + 3 * i, K[0], K[4], K[2], K[5], p)) {
    r[0] = r[1] = r[2] = r[3] = 0;
    return;
  }
  int prect[4];
  pixel_rect(means + 3 * i, tu + 3 * i, tv + 3 * i, p, K[0], K[4], K[2], K[5], width, height,
             prect);
  tiles_of_rect(prect, tile, r);
  counts[i] = int64_t(r[1] - r[0]) * int64_t(r[3] - r[2]);
}

__global__ void emit_keys_kernel(const int* __restrict__ rects, const int64_t* __restrict__ starts,
                                 const int64_t* __restrict__ rank, int C, int N, int tiles_x,
                                 int64_t n_tiles, int64_t* __restrict__ keys,
                                 int* __restrict__ vals) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(C) * N) return;
  const int c = int(i / N);
  const int* r = rects + 4 * i;
  int64_t o = starts[i];
  for (int ty = r[2]; ty < r[3]; ++ty) {
    for (int tx = r[0]; tx < r[1]; ++tx) {
      const int64_t tile_id = int64_t(c) * n_tiles + int64_t(ty) * tiles_x + tx;
      keys[o] = (tile_id << 32) | rank[i];
      vals[o] = int(i % N);
      ++o;
    }
  }
}

template <typename T>
__device__ __forceinline__ void load_batch(const T* __restrict__ packed,
                                           const int* __restrict__ ids, int c, int N, int begin,
                                           int count, T* sp, int* sid) {
  for (int k = threadIdx.x; k < count * kPacked; k += blockDim.x) {
    const int e = k / kPacked;
    const int slot = k % kPacked;
    const int id = ids[begin + e];
    sp[k] = packed[(int64_t(c) * N + id) * kPacked + slot];
    if (slot == 0) sid[e] = id;
  }
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ packed, const T* __restrict__ Ks,
                               const int* __restrict__ offsets, const int* __restrict__ ids, int N,
                               int width, int height, int tile, int tiles_x, int n_tiles,
                               T* __restrict__ accum, T* __restrict__ median,
                               T* __restrict__ final_T, int* __restrict__ last,
                               int* __restrict__ med_pos) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sp = reinterpret_cast<T*>(smem);
  int* sid = reinterpret_cast<int*>(sp + kBatch * kPacked);
  const int block = blockIdx.x;
  const int c = block / n_tiles;
  const int t = block % n_tiles;
  const int q = threadIdx.x;
  const int x = (t % tiles_x) * tile + q % tile;
  const int y = (t / tiles_x) * tile + q / tile;
  const bool inside = q < tile * tile && x < width && y < height;
  const T* K = Ks + 9 * c;
  const T px = T(x) + T(0.5), py = T(y) + T(0.5);
  const T dx = (px - K[2]) / K[0], dy = (py - K[5]) / K[4];
  T Tp = T(1), medz = T(0);
  T acc[kChannels];
  for (int k = 0; k < kChannels; ++k) acc[k] = T(0);
  int lastp = 0, medp = -1;
  bool done = !inside;
  const int begin = offsets[block], end = offsets[block + 1];
  for (int b0 = begin; b0 < end; b0 += kBatch) {
    if (__syncthreads_count(done) == int(blockDim.x)) break;  // also guards the shared batch
    const int count = min(kBatch, end - b0);
    load_batch(packed, ids, c, N, b0, count, sp, sid);
    __syncthreads();
    for (int k = 0; k < count && !done; ++k) {
      const T* p = sp + k * kPacked;
      Hit<T> h;
      if (!eval_pair(p, px, py, dx, dy, h)) continue;
      const T next = Tp * (T(1) - h.alpha);
      if (next < T(kTMin)) {
        done = true;
        break;
      }
      const T w = h.alpha * Tp;
      acc[0] += w * p[kColor];
      acc[1] += w * p[kColor + 1];
      acc[2] += w * p[kColor + 2];
      acc[3] += w;
      acc[4] += w * h.z;
      acc[5] += w * h.z * h.z;
      acc[6] += w * p[kNormal];
      acc[7] += w * p[kNormal + 1];
      acc[8] += w * p[kNormal + 2];
      const int pos = b0 - begin + k;
      if (medp < 0 && next < T(kTMedian)) {
        medp = pos;
        medz = h.z;
      }
      Tp = next;
      lastp = pos + 1;
    }
  }
  if (!inside) return;
  const int64_t pix = (int64_t(c) * height + y) * width + x;
  for (int k = 0; k < kChannels; ++k) accum[pix * kChannels + k] = acc[k];
  median[pix] = medz;
  final_T[pix] = Tp;
  last[pix] = lastp;
  med_pos[pix] = medp;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ packed, const T* __restrict__ Ks,
                                const int* __restrict__ offsets, const int* __restrict__ ids,
                                int N, int width, int height, int tile, int tiles_x, int n_tiles,
                                const T* __restrict__ final_T, const int* __restrict__ last,
                                const int* __restrict__ med_pos, const T* __restrict__ grad_accum,
                                const T* __restrict__ grad_median, T* __restrict__ grad_packed) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* sp = reinterpret_cast<T*>(smem);
  int* sid = reinterpret_cast<int*>(sp + kBatch * kPacked);
  __shared__ int s_max_last;
  const int block = blockIdx.x;
  const int c = block / n_tiles;
  const int t = block % n_tiles;
  const int q = threadIdx.x;
  const int lane = q & 31;
  const int x = (t % tiles_x) * tile + q % tile;
  const int y = (t / tiles_x) * tile + q / tile;
  const bool inside = q < tile * tile && x < width && y < height;
  const T* K = Ks + 9 * c;
  const T px = T(x) + T(0.5), py = T(y) + T(0.5);
  const T dx = (px - K[2]) / K[0], dy = (py - K[5]) / K[4];
  T Tp = T(1), accG = T(0), Gmed = T(0);
  T G[kChannels];
  int lastp = 0, medp = -1;
  if (q == 0) s_max_last = 0;
  __syncthreads();
  if (inside) {
    const int64_t pix = (int64_t(c) * height + y) * width + x;
    Tp = final_T[pix];
    lastp = last[pix];
    medp = med_pos[pix];
    Gmed = grad_median[pix];
    for (int k = 0; k < kChannels; ++k) G[k] = grad_accum[pix * kChannels + k];
    atomicMax(&s_max_last, lastp);
  } else {
    for (int k = 0; k < kChannels; ++k) G[k] = T(0);
  }
  __syncthreads();
  const int begin = offsets[block];
  for (int hi = s_max_last; hi > 0; hi -= kBatch) {
    const int lo = max(0, hi - kBatch);
    __syncthreads();  // the previous batch is no longer read
    load_batch(packed, ids, c, N, begin + lo, hi - lo, sp, sid);
    __syncthreads();
    for (int jj = hi - 1; jj >= lo; --jj) {
      const T* p = sp + (jj - lo) * kPacked;
      T g[kPacked];
      for (int k = 0; k < kPacked; ++k) g[k] = T(0);
      bool contrib = false;
      Hit<T> h;
      if (jj < lastp && eval_pair(p, px, py, dx, dy, h)) {
        contrib = true;
        const T one_minus = T(1) - h.alpha;
        const T Ti = Tp / one_minus;
        const T w = h.alpha * Ti;
        const T Gf = G[0] * p[kColor] + G[1] * p[kColor + 1] + G[2] * p[kColor + 2] + G[3] +
                     G[4] * h.z + G[5] * h.z * h.z + G[6] * p[kNormal] + G[7] * p[kNormal + 1] +
                     G[8] * p[kNormal + 2];
        const T dL_dalpha = Ti * Gf - accG / one_minus;
        accG += w * Gf;
        Tp = Ti;
        for (int k = 0; k < 3; ++k) {
          g[kColor + k] = w * G[k];
          g[kNormal + k] = w * G[6 + k];
        }
        T dL_dz = w * (G[4] + T(2) * h.z * G[5]);
        if (medp == jj) dL_dz += Gmed;
        pair_geometry_grad(p, h, px, py, dx, dy, dL_dalpha, dL_dz, g);
      }
      if (__any_sync(0xffffffffu, contrib)) {
        T* dst = grad_packed + (int64_t(c) * N + sid[jj - lo]) * kPacked;
        for (int k = 0; k < kPacked; ++k) {
          const T v = warp_sum(g[k]);
          if (lane == 0 && v != T(0)) atomicAdd(dst + k, v);
        }
      }
    }
  }
}

template <typename T>
__global__ void unpack_grad_kernel(const T* __restrict__ means, const T* __restrict__ tu,
                                   const T* __restrict__ tv, const T* __restrict__ Ks, int C,
                                   int N, const T* __restrict__ grad_packed, T* g_means, T* g_tu,
                                   T* g_tv, T* g_opacities, T* g_colors, T* g_normals) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(C) * N) return;
  if (!(means[3 * i + 2] >= T(kNear))) return;
  const T* K = Ks + 9 * (i / N);
  unpack_grad(means + 3 * i, tu + 3 * i, tv + 3 * i, grad_packed + kPacked * i, K[0], K[4],
              g_means + 3 * i, g_tu + 3 * i, g_tv + 3 * i, g_opacities + i, g_colors + 3 * i,
              g_normals + 3 * i);
}

struct TileLists {
  at::Tensor packed, offsets, ids;
};

// Packed records and depth-sorted per-tile lists (shared by forward and backward).
TileLists build_tile_lists(const at::Tensor& means, const at::Tensor& tu, const at::Tensor& tv,
                           const at::Tensor& opacities, const at::Tensor& colors,
                           const at::Tensor& normals, const at::Tensor& Ks, int width, int height,
                           int tile, bool with_lists) {
  const int C = int(means.size(0)), N = int(means.size(1));
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int64_t n_tiles = int64_t(tiles_x) * tiles_y;
  const auto opts = means.options();
  const auto lopts = opts.dtype(at::kLong);
  const auto iopts = opts.dtype(at::kInt);
  auto stream = c10::cuda::getCurrentCUDAStream();
  TileLists out;
  out.packed = at::empty({C, N, kPacked}, opts);
  at::Tensor rects = at::empty({C, N, 4}, iopts);
  at::Tensor counts = at::empty({int64_t(C) * N}, lopts);
  const int64_t total = int64_t(C) * N;
  if (total > 0) {
    const int threads = 256;
    const int blocks = int((total + threads - 1) / threads);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "recon4d_preprocess", [&] {
      preprocess_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
          means.data_ptr<scalar_t>(), tu.data_ptr<scalar_t>(), tv.data_ptr<scalar_t>(),
          opacities.data_ptr<scalar_t>(), colors.data_ptr<scalar_t>(),
          normals.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), C, N, width, height, tile,
          out.packed.data_ptr<scalar_t>(), rects.data_ptr<int>(), counts.data_ptr<int64_t>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  if (!with_lists) return out;
  const int64_t M = total > 0 ? counts.sum().item<int64_t>() : 0;
  TORCH_CHECK(M <= int64_t(INT32_MAX), "recon4d rasteriser: more than 2^31 tile-surfel pairs; "
              "render fewer cameras per call or a smaller image");
  if (M == 0) {
    out.offsets = at::zeros({C * n_tiles + 1}, iopts);
    out.ids = at::empty({0}, iopts);
    return out;
  }
  // Depth rank within each camera, ties by index (stable sort).
  at::Tensor depth = means.select(2, 2).contiguous();
  at::Tensor order = std::get<1>(at::sort(depth, /*stable=*/true, /*dim=*/1, false));
  at::Tensor rank = at::empty({C, N}, lopts);
  rank.scatter_(1, order, at::arange(N, lopts).expand({C, N}).contiguous());
  at::Tensor starts = at::cumsum(counts, 0) - counts;
  at::Tensor keys = at::empty({M}, lopts);
  at::Tensor vals = at::empty({M}, iopts);
  {
    const int threads = 256;
    const int blocks = int((total + threads - 1) / threads);
    emit_keys_kernel<<<blocks, threads, 0, stream>>>(
        rects.data_ptr<int>(), starts.data_ptr<int64_t>(), rank.contiguous().data_ptr<int64_t>(),
        C, N, tiles_x, n_tiles, keys.data_ptr<int64_t>(), vals.data_ptr<int>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto sorted = at::sort(keys);
  at::Tensor sorted_keys = std::get<0>(sorted);
  out.ids = vals.index_select(0, std::get<1>(sorted)).contiguous();
  at::Tensor tile_of = at::bitwise_right_shift(sorted_keys, 32);
  out.offsets = at::searchsorted(tile_of, at::arange(C * n_tiles + 1, lopts), /*out_int32=*/true)
                    .contiguous();
  return out;
}

void check_tile(int tile) {
  TORCH_CHECK(tile * tile <= 1024, "CUDA kernels need tile_size * tile_size <= 1024, got ", tile);
}

}  // namespace

std::vector<at::Tensor> rasterize_forward_cuda(const at::Tensor& means, const at::Tensor& tu,
                                               const at::Tensor& tv, const at::Tensor& opacities,
                                               const at::Tensor& colors,
                                               const at::Tensor& normals, const at::Tensor& Ks,
                                               int width, int height, int tile, at::Tensor& accum,
                                               at::Tensor& median, at::Tensor& final_T,
                                               at::Tensor& last, at::Tensor& med_pos) {
  check_tile(tile);
  const c10::cuda::CUDAGuard guard(means.device());
  const int C = int(means.size(0)), N = int(means.size(1));
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int n_tiles = tiles_x * tiles_y;
  TileLists lists =
      build_tile_lists(means, tu, tv, opacities, colors, normals, Ks, width, height, tile, true);
  if (lists.ids.numel() == 0 || C == 0) return {lists.offsets, lists.ids};
  const int threads = round_up_warp(tile * tile);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "recon4d_forward_cuda", [&] {
    const size_t shared = kBatch * kPacked * sizeof(scalar_t) + kBatch * sizeof(int);
    forward_kernel<scalar_t><<<C * n_tiles, threads, shared, c10::cuda::getCurrentCUDAStream()>>>(
        lists.packed.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), lists.offsets.data_ptr<int>(),
        lists.ids.data_ptr<int>(), N, width, height, tile, tiles_x, n_tiles,
        accum.data_ptr<scalar_t>(), median.data_ptr<scalar_t>(), final_T.data_ptr<scalar_t>(),
        last.data_ptr<int>(), med_pos.data_ptr<int>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {lists.offsets, lists.ids};
}

void rasterize_backward_cuda(const at::Tensor& means, const at::Tensor& tu, const at::Tensor& tv,
                             const at::Tensor& opacities, const at::Tensor& colors,
                             const at::Tensor& normals, const at::Tensor& Ks, int width,
                             int height, int tile, const at::Tensor& offsets,
                             const at::Tensor& ids, const at::Tensor& final_T,
                             const at::Tensor& last, const at::Tensor& med_pos,
                             const at::Tensor& grad_accum, const at::Tensor& grad_median,
                             at::Tensor& g_means, at::Tensor& g_tu, at::Tensor& g_tv,
                             at::Tensor& g_opacities, at::Tensor& g_colors,
                             at::Tensor& g_normals) {
  check_tile(tile);
  const c10::cuda::CUDAGuard guard(means.device());
  const int C = int(means.size(0)), N = int(means.size(1));
  if (C == 0 || N == 0 || ids.numel() == 0) return;
  const int tiles_x = (width + tile - 1) / tile;
  const int tiles_y = (height + tile - 1) / tile;
  const int n_tiles = tiles_x * tiles_y;
  TileLists lists =
      build_tile_lists(means, tu, tv, opacities, colors, normals, Ks, width, height, tile, false);
  at::Tensor grad_packed = at::zeros({C, N, kPacked}, means.options());
  const int threads = round_up_warp(tile * tile);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "recon4d_backward_cuda", [&] {
    const size_t shared = kBatch * kPacked * sizeof(scalar_t) + kBatch * sizeof(int);
    backward_kernel<scalar_t><<<C * n_tiles, threads, shared, stream>>>(
        lists.packed.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(), offsets.data_ptr<int>(),
        ids.data_ptr<int>(), N, width, height, tile, tiles_x, n_tiles,
        final_T.data_ptr<scalar_t>(), last.data_ptr<int>(), med_pos.data_ptr<int>(),
        grad_accum.data_ptr<scalar_t>(), grad_median.data_ptr<scalar_t>(),
        grad_packed.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t total = int64_t(C) * N;
    const int ublocks = int((total + 255) / 256);
    unpack_grad_kernel<scalar_t><<<ublocks, 256, 0, stream>>>(
        means.data_ptr<scalar_t>(), tu.data_ptr<scalar_t>(), tv.data_ptr<scalar_t>(),
        Ks.data_ptr<scalar_t>(), C, N, grad_packed.data_ptr<scalar_t>(),
        g_means.data_ptr<scalar_t>(), g_tu.data_ptr<scalar_t>(), g_tv.data_ptr<scalar_t>(),
        g_opacities.data_ptr<scalar_t>(), g_colors.data_ptr<scalar_t>(),
        g_normals.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace recon4d
