// Torch bindings of recon4d's native surfel rasteriser: tensor checks, allocation and dispatch to
// the CPU implementation (rasterize_cpu.cpp) or, when built with RECON4D_WITH_CUDA, the CUDA one
// (rasterize_cuda.cu). The autograd wiring lives in recon4d/render/native.py.
//
// The ops are registered with TORCH_LIBRARY under the namespace R4D_LIB_NAME (set by native.py to
// the build's unique module name) instead of a pybind11 module: the light headers below compile
// in about a third of the time of <torch/extension.h>, which matters for the first-use build.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <utility>

#include <vector>

#include "rasterize.h"

#ifdef RECON4D_WITH_CUDA
#include "rasterize_cuda.h"
#endif

namespace {

void check_input(const at::Tensor& t, const char* name, const at::Tensor& ref, int64_t dim1,
                 int64_t dim2) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as means_c");
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of means_c");
  if (dim2 > 0) {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == dim1 && t.size(2) == dim2, name,
                " has the wrong shape ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == dim1, name, " has the wrong shape ", t.sizes());
  }
}

struct Inputs {
  at::Tensor means, tu, tv, opacities, colors, normals, Ks;
  int C = 0, N = 0;
};

Inputs prepare(const at::Tensor& means, const at::Tensor& tu, const at::Tensor& tv,
               const at::Tensor& opacities, const at::Tensor& colors, const at::Tensor& normals,
               const at::Tensor& Ks) {
  TORCH_CHECK(means.dim() == 3 && means.size(2) == 3, "means_c must be (C, N, 3), got ",
              means.sizes());
  TORCH_CHECK(means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble,
              "means_c must be float32 or float64");
  const int64_t C = means.size(0), N = means.size(1);
  check_input(tu, "tu_c", means, C, 3);
  check_input(tv, "tv_c", means, C, 3);
  check_input(colors, "colors", means, C, 3);
  check_input(normals, "normals", means, C, 3);
  check_input(opacities, "opacities", means, C, 0);
  const std::pair<const at::Tensor*, const char*> rows[] = {
      {&tu, "tu_c"}, {&tv, "tv_c"}, {&opacities, "opacities"}, {&colors, "colors"},
      {&normals, "normals"}};
  for (const auto& [t, name] : rows) {
    TORCH_CHECK(t->size(1) == N, name, " has ", t->size(1), " surfels, means_c has ", N);
  }
  check_input(Ks, "Ks", means, C, 3);
  TORCH_CHECK(Ks.size(1) == 3, "Ks must be (C, 3, 3)");
  Inputs in;
  in.means = means.contiguous();
  in.tu = tu.contiguous();
  in.tv = tv.contiguous();
  in.opacities = opacities.contiguous();
  in.colors = colors.contiguous();
  in.normals = normals.contiguous();
  in.Ks = Ks.contiguous();
  in.C = int(C);
  in.N = int(N);
  return in;
}

std::vector<at::Tensor> forward(const at::Tensor& means, const at::Tensor& tu, const at::Tensor& tv,
                                const at::Tensor& opacities, const at::Tensor& colors,
                                const at::Tensor& normals, const at::Tensor& Ks, int64_t width,
                                int64_t height, int64_t tile) {
  TORCH_CHECK(width > 0 && height > 0 && tile > 0, "width, height and tile_size must be positive");
  Inputs in = prepare(means, tu, tv, opacities, colors, normals, Ks);
  const auto opts = in.means.options();
  const auto iopts = opts.dtype(at::kInt);
  at::Tensor accum = at::zeros({in.C, height, width, 9}, opts);
  at::Tensor median = at::zeros({in.C, height, width}, opts);
  at::Tensor final_T = at::ones({in.C, height, width}, opts);
  at::Tensor last = at::zeros({in.C, height, width}, iopts);
  at::Tensor med_pos = at::full({in.C, height, width}, -1, iopts);
  if (in.means.is_cuda()) {
#ifdef RECON4D_WITH_CUDA
    std::vector<at::Tensor> lists = recon4d::cuda::rasterize_forward_cuda(
        in.means, in.tu, in.tv, in.opacities, in.colors, in.normals, in.Ks, int(width),
        int(height), int(tile), accum, median, final_T, last, med_pos);
    return {accum, median, final_T, last, med_pos, lists[0], lists[1]};
#else
    TORCH_CHECK(false, "this build of the recon4d kernels has no CUDA support");
#endif
  }
  TORCH_CHECK(in.means.is_cpu(), "unsupported device ", in.means.device());
  std::vector<int32_t> offsets, ids;
  AT_DISPATCH_FLOATING_TYPES(in.means.scalar_type(), "recon4d_rasterize_forward", [&] {
    recon4d::cpu::rasterize_forward<scalar_t>(
        in.means.data_ptr<scalar_t>(), in.tu.data_ptr<scalar_t>(), in.tv.data_ptr<scalar_t>(),
        in.opacities.data_ptr<scalar_t>(), in.colors.data_ptr<scalar_t>(),
        in.normals.data_ptr<scalar_t>(), in.Ks.data_ptr<scalar_t>(), in.C, in.N, int(width),
        int(height), int(tile), at::get_num_threads(), accum.data_ptr<scalar_t>(),
        median.data_ptr<scalar_t>(), final_T.data_ptr<scalar_t>(), last.data_ptr<int32_t>(),
        med_pos.data_ptr<int32_t>(), offsets, ids);
  });
  at::Tensor offsets_t = at::empty({int64_t(offsets.size())}, iopts);
  at::Tensor ids_t = at::empty({int64_t(ids.size())}, iopts);
  std::copy(offsets.begin(), offsets.end(), offsets_t.data_ptr<int32_t>());
  std::copy(ids.begin(), ids.end(), ids_t.data_ptr<int32_t>());
  return {accum, median, final_T, last, med_pos, offsets_t, ids_t};
}

std::vector<at::Tensor> backward(const at::Tensor& means, const at::Tensor& tu,
                                 const at::Tensor& tv, const at::Tensor& opacities,
                                 const at::Tensor& colors, const at::Tensor& normals,
                                 const at::Tensor& Ks, int64_t width, int64_t height, int64_t tile,
                                 const at::Tensor& offsets, const at::Tensor& ids,
                                 const at::Tensor& final_T, const at::Tensor& last,
                                 const at::Tensor& med_pos, const at::Tensor& grad_accum,
                                 const at::Tensor& grad_median) {
  Inputs in = prepare(means, tu, tv, opacities, colors, normals, Ks);
  TORCH_CHECK(grad_accum.sizes() == at::IntArrayRef({in.C, height, width, 9}),
              "grad_accum has the wrong shape ", grad_accum.sizes());
  TORCH_CHECK(grad_median.sizes() == at::IntArrayRef({in.C, height, width}),
              "grad_median has the wrong shape ", grad_median.sizes());
  const at::Tensor ga = grad_accum.to(in.means.scalar_type()).contiguous();
  const at::Tensor gm = grad_median.to(in.means.scalar_type()).contiguous();
  at::Tensor g_means = at::zeros_like(in.means);
  at::Tensor g_tu = at::zeros_like(in.tu);
  at::Tensor g_tv = at::zeros_like(in.tv);
  at::Tensor g_op = at::zeros_like(in.opacities);
  at::Tensor g_col = at::zeros_like(in.colors);
  at::Tensor g_nrm = at::zeros_like(in.normals);
  const at::Tensor off = offsets.contiguous(), idc = ids.contiguous();
  const at::Tensor fT = final_T.contiguous(), la = last.contiguous(), mp = med_pos.contiguous();
  if (in.means.is_cuda()) {
#ifdef RECON4D_WITH_CUDA
    recon4d::cuda::rasterize_backward_cuda(in.means, in.tu, in.tv, in.opacities, in.colors,
                                           in.normals, in.Ks, int(width), int(height), int(tile),
                                           off, idc, fT, la, mp, ga, gm, g_means, g_tu, g_tv, g_op,
                                           g_col, g_nrm);
    return {g_means, g_tu, g_tv, g_op, g_col, g_nrm};
#else
    TORCH_CHECK(false, "this build of the recon4d kernels has no CUDA support");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(in.means.scalar_type(), "recon4d_rasterize_backward", [&] {
    recon4d::cpu::rasterize_backward<scalar_t>(
        in.means.data_ptr<scalar_t>(), in.tu.data_ptr<scalar_t>(), in.tv.data_ptr<scalar_t>(),
        in.opacities.data_ptr<scalar_t>(), in.colors.data_ptr<scalar_t>(),
        in.normals.data_ptr<scalar_t>(), in.Ks.data_ptr<scalar_t>(), in.C, in.N, int(width),
        int(height), int(tile), at::get_num_threads(), off.data_ptr<int32_t>(),
        idc.data_ptr<int32_t>(), fT.data_ptr<scalar_t>(), la.data_ptr<int32_t>(),
        mp.data_ptr<int32_t>(), ga.data_ptr<scalar_t>(), gm.data_ptr<scalar_t>(),
        g_means.data_ptr<scalar_t>(), g_tu.data_ptr<scalar_t>(), g_tv.data_ptr<scalar_t>(),
        g_op.data_ptr<scalar_t>(), g_col.data_ptr<scalar_t>(), g_nrm.data_ptr<scalar_t>());
  });
  return {g_means, g_tu, g_tv, g_op, g_col, g_nrm};
}

bool with_cuda() {
#ifdef RECON4D_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

#ifndef R4D_LIB_NAME
#define R4D_LIB_NAME recon4d_raster
#endif
// Indirection so that R4D_LIB_NAME is expanded before TORCH_LIBRARY pastes it into identifiers.
#define R4D_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

R4D_LIBRARY(R4D_LIB_NAME, m) {
  // forward(means_c, tu_c, tv_c, opacities, colors, normals, Ks, width, height, tile)
  //   -> [accum, median, final_T, last, med_pos, offsets, ids]
  m.def("forward", &forward);
  // backward(inputs..., width, height, tile, offsets, ids, final_T, last, med_pos, grad_accum,
  //          grad_median) -> [g_means, g_tu, g_tv, g_opacities, g_colors, g_normals]
  m.def("backward", &backward);
  m.def("with_cuda", &with_cuda);
}
