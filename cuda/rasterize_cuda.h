// CUDA entry points of recon4d's surfel rasteriser (rasterize_cuda.cu); same contract as the CPU
// functions in rasterize.h, on CUDA tensors (all contiguous, on one device, float32 or float64).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace recon4d {
namespace cuda {

// Fills accum (C,H,W,9), median, final_T, last, med_pos (preallocated, see rasterize.h);
// returns {offsets (C*tiles+1,), ids (M,)} as int32 CUDA tensors.
std::vector<at::Tensor> rasterize_forward_cuda(const at::Tensor& means, const at::Tensor& tu,
                                               const at::Tensor& tv, const at::Tensor& opacities,
                                               const at::Tensor& colors,
                                               const at::Tensor& normals, const at::Tensor& Ks,
                                               int width, int height, int tile, at::Tensor& accum,
                                               at::Tensor& median, at::Tensor& final_T,
                                               at::Tensor& last, at::Tensor& med_pos);

// Accumulates into the zero-initialised gradient tensors g_*.
void rasterize_backward_cuda(const at::Tensor& means, const at::Tensor& tu, const at::Tensor& tv,
                             const at::Tensor& opacities, const at::Tensor& colors,
                             const at::Tensor& normals, const at::Tensor& Ks, int width,
                             int height, int tile, const at::Tensor& offsets,
                             const at::Tensor& ids, const at::Tensor& final_T,
                             const at::Tensor& last, const at::Tensor& med_pos,
                             const at::Tensor& grad_accum, const at::Tensor& grad_median,
                             at::Tensor& g_means, at::Tensor& g_tu, at::Tensor& g_tv,
                             at::Tensor& g_opacities, at::Tensor& g_colors, at::Tensor& g_normals);

}  // namespace cuda
}  // namespace recon4d
