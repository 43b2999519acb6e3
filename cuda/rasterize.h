// Host-side API of recon4d's native surfel rasteriser (CPU in rasterize_cpu.cpp, CUDA in
// rasterize_cuda.cu; torch bindings in bindings.cpp). Plain pointers and std::vector only, so the
// kernel files compile without the heavy torch headers.
//
// Shapes (all contiguous, row-major; C cameras, N surfels per camera, H x W pixels):
//   means, tu, tv, colors, normals: (C, N, 3)   camera-space centre and scaled tangent axes; colour;
//                                               WORLD-space normal (only accumulated, never used
//                                               in the geometry)
//   opacities: (C, N)       Ks: (C, 3, 3) pixels
//   accum: (C, H, W, 9)     [rgb, alpha, sum w z, sum w z^2, normal]
//   median: (C, H, W)       final_T: (C, H, W)  transmittance after the last added surfel
//   last: (C, H, W) int32   number of tile-list entries up to and including the last added one
//   med_pos: (C, H, W) int32 tile-list position of the median surfel, -1 if none
//   offsets: C * tiles_y * tiles_x + 1 int32   start of each tile's list in ids
//   ids: int32              surfel index (within its camera) of each list entry, sorted by
//                           centre depth (ties by index) inside each tile
#pragma once

#include <cstdint>
#include <vector>

namespace recon4d {
namespace cpu {

template <typename T>
void rasterize_forward(const T* means, const T* tu, const T* tv, const T* opacities,
                       const T* colors, const T* normals, const T* Ks, int C, int N, int width,
                       int height, int tile, int num_threads, T* accum, T* median, T* final_T,
                       int32_t* last, int32_t* med_pos, std::vector<int32_t>& offsets,
                       std::vector<int32_t>& ids);

// Gradient outputs must be zero-initialised by the caller (they are accumulated into).
template <typename T>
void rasterize_backward(const T* means, const T* tu, const T* tv, const T* opacities,
                        const T* colors, const T* normals, const T* Ks, int C, int N, int width,
                        int height, int tile, int num_threads, const int32_t* offsets,
                        const int32_t* ids, const T* final_T, const int32_t* last,
                        const int32_t* med_pos, const T* grad_accum, const T* grad_median,
                        T* g_means, T* g_tu, T* g_tv, T* g_opacities, T* g_colors, T* g_normals);

}  // namespace cpu
}  // namespace recon4d
