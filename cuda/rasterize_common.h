// Shared per-pixel maths of recon4d's surfel rasteriser, used verbatim by the CPU (C++) and the
// CUDA implementation so that both follow one algorithm (docs/native_kernels.md, the renderer spec
// in docs/design.md §4).
//
// Frames and units: everything is in CAMERA space of one pinhole camera (OpenCV axes, z forward),
// pixel coordinates in pixels with pixel centres at +0.5.
//
// Intersection. For a pixel the ray is d = ((px-cx)/fx, (py-cy)/fy, 1). The spec solves
//     u*tu + v*tv - z*d = -m            (m = surfel centre, tu/tv = scaled tangent axes)
// by Cramer's rule. With n = tu x tv (unnormalised normal) every Cramer determinant is a dot
// product of d with a per-surfel vector, so they are precomputed once per surfel ("packed"):
//     D = d.n  (= -det of the 3x3 system),  u = d.(tv x m) / D,  v = d.(m x tu) / D,
//     z = (m.n) / D.
// This is algebraically the same solution; per pixel it costs three dot products and a division.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define R4D_HD __host__ __device__ __forceinline__
#else
#define R4D_HD inline
#endif

namespace recon4d {

// Constants of the spec (one place, shared by CPU and CUDA).
constexpr double kNear = 0.01;             // cull surfels whose centre has z < kNear
constexpr double kDetEps = 1e-12;          // |det| below this: degenerate system, rho3d = +inf
constexpr double kRhoMax = 9.0;            // 3-sigma cut
constexpr double kAlphaMax = 0.99;         // alpha clamp (zero gradient when clamped)
constexpr double kAlphaMin = 1.0 / 255.0;  // skip nearly transparent pairs
constexpr double kTMin = 1e-4;             // early termination threshold on transmittance
constexpr double kTMedian = 0.5;           // median depth: first surfel after which T < 0.5
constexpr int kChannels = 9;               // rgb(3), alpha, sum w z, sum w z^2, normal(3)

// Packed per-(camera, surfel) record; the layout is also the layout of the per-surfel gradient
// slots (slot k holds dL/d packed[k]).
enum PackedSlot : int {
  kHu = 0,       // tv x m (3)
  kHv = 3,       // m x tu (3)
  kN = 6,        // tu x tv (3)
  kC = 9,        // m . (tu x tv)
  kQx = 10,      // projected centre, pixels
  kQy = 11,
  kMz = 12,      // centre depth
  kOpacity = 13,
  kColor = 14,   // (3)
  kNormal = 17,  // world-space normal (3)
  kPacked = 20
};

// Overloads that resolve the same way on host and device for float and double.
R4D_HD float r4d_exp(float x) { return expf(x); }
R4D_HD double r4d_exp(double x) { return exp(x); }
R4D_HD float r4d_abs(float x) { return fabsf(x); }
R4D_HD double r4d_abs(double x) { return fabs(x); }
R4D_HD float r4d_floor(float x) { return floorf(x); }
R4D_HD double r4d_floor(double x) { return floor(x); }

template <typename T>
R4D_HD void cross3(const T* a, const T* b, T* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

template <typename T>
R4D_HD T dot3(const T* a, const T* b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

// Fill the packed record of one surfel; returns false when the surfel is culled (z < NEAR).
template <typename T>
R4D_HD bool pack_surfel(const T* m, const T* tu, const T* tv, T opacity, const T* color,
                        const T* normal, T fx, T fy, T cx, T cy, T* p) {
  if (!(m[2] >= T(kNear))) {
    return false;
  }
  cross3(tv, m, p + kHu);
  cross3(m, tu, p + kHv);
  cross3(tu, tv, p + kN);
  p[kC] = dot3(m, p + kN);
  p[kQx] = fx * m[0] / m[2] + cx;
  p[kQy] = fy * m[1] / m[2] + cy;
  p[kMz] = m[2];
  p[kOpacity] = opacity;
  for (int k = 0; k < 3; ++k) {
    p[kColor + k] = color[k];
    p[kNormal + k] = normal[k];
  }
  return true;
}

// One ray-surfel evaluation.
template <typename T>
struct Hit {
  T rho;      // squared Mahalanobis radius used (rho3d or rho2d)
  T z;        // depth z_i of the pair
  T u, v, D;  // intersection coordinates and d.n (valid when three_d)
  T alpha;    // min(0.99, o * g)
  T g;        // exp(-0.5 rho)
  bool three_d;
  bool clamped;  // alpha hit the 0.99 clamp (no gradient through it)
};

// Evaluate surfel `p` at pixel centre (px, py) with ray (dx, dy, 1). Returns false when the pair is
// skipped (rho > 9, alpha < 1/255, or a NaN radius). Identical code in forward and backward keeps
// the skip decisions identical.
template <typename T>
R4D_HD bool eval_pair(const T* p, T px, T py, T dx, T dy, Hit<T>& h) {
  const T D = dx * p[kN] + dy * p[kN + 1] + p[kN + 2];
  const T nu = dx * p[kHu] + dy * p[kHu + 1] + p[kHu + 2];
  const T nv = dx * p[kHv] + dy * p[kHv + 1] + p[kHv + 2];
  const T ex = px - p[kQx];
  const T ey = py - p[kQy];
  const T rho2d = T(2) * (ex * ex + ey * ey);
  // Quick reject without divisions: neither radius can be <= 9 (1% slack keeps it conservative
  // against rounding, so the decisions equal those of the exact formulas below).
  if (rho2d > T(kRhoMax) && !(nu * nu + nv * nv <= T(kRhoMax * 1.01) * D * D)) {
    return false;
  }
  T rho3d = T(INFINITY);
  T u = T(0), v = T(0);
  // The ray meets the surfel's plane at z = C / D: only a hit in front of the camera counts
  // (C D > 0). A surfel straddling the near plane otherwise drew a mirrored ghost at negative
  // depth where the rays meet its plane behind the camera.
  if (r4d_abs(D) >= T(kDetEps) && p[kC] * D > T(0)) {
    u = nu / D;
    v = nv / D;
    rho3d = u * u + v * v;
  }
  if (rho3d <= rho2d) {
    h.rho = rho3d;
    h.z = p[kC] / D;
    h.three_d = true;
  } else {
    h.rho = rho2d;
    h.z = p[kMz];
    h.three_d = false;
  }
  if (!(h.rho <= T(kRhoMax))) {
    return false;
  }
  h.u = u;
  h.v = v;
  h.D = D;
  h.g = r4d_exp(T(-0.5) * h.rho);
  const T raw = p[kOpacity] * h.g;
  h.clamped = raw > T(kAlphaMax);
  h.alpha = h.clamped ? T(kAlphaMax) : raw;
  return h.alpha >= T(kAlphaMin);
}

// Gradient of one pair w.r.t. the packed record, given dL/d alpha (before the clamp) and dL/dz.
// Adds into g[0..kMz] (geometry, opacity); colour and normal slots are handled by the caller.
template <typename T>
R4D_HD void pair_geometry_grad(const T* p, const Hit<T>& h, T px, T py, T dx, T dy, T dL_dalpha,
                               T dL_dz, T* g) {
  T dL_drho = T(0);
  if (!h.clamped) {
    g[kOpacity] += dL_dalpha * h.g;
    dL_drho = dL_dalpha * T(-0.5) * h.alpha;
  }
  if (h.three_d) {
    const T inv = T(1) / h.D;
    const T gu = dL_drho * T(2) * h.u * inv;
    const T gv = dL_drho * T(2) * h.v * inv;
    const T gz = dL_dz * inv;
    // u = d.hu / D, v = d.hv / D, z = c / D, D = d.n  (d = (dx, dy, 1))
    const T gn = -(gu * h.u + gv * h.v + gz * h.z);
    g[kHu] += gu * dx;
    g[kHu + 1] += gu * dy;
    g[kHu + 2] += gu;
    g[kHv] += gv * dx;
    g[kHv + 1] += gv * dy;
    g[kHv + 2] += gv;
    g[kN] += gn * dx;
    g[kN + 1] += gn * dy;
    g[kN + 2] += gn;
    g[kC] += gz;
  } else {
    // rho2d = 2 |p - q|^2, z = mz
    g[kQx] += dL_drho * T(-4) * (px - p[kQx]);
    g[kQy] += dL_drho * T(-4) * (py - p[kQy]);
    g[kMz] += dL_dz;
  }
}

// Chain rule from the packed-record gradient `g` to the inputs of one surfel (adds into the
// outputs). m, tu, tv are the camera-space inputs that produced the record.
template <typename T>
R4D_HD void unpack_grad(const T* m, const T* tu, const T* tv, const T* g, T fx, T fy, T* gm,
                        T* gtu, T* gtv, T* gop, T* gcol, T* gnrm) {
  T tmp[3];
  T n[3];
  cross3(tu, tv, n);
  // hu = tv x m
  cross3(g + kHu, tv, tmp);  // d/dm: g x tv
  for (int k = 0; k < 3; ++k) gm[k] += tmp[k];
  cross3(m, g + kHu, tmp);  // d/dtv: m x g
  for (int k = 0; k < 3; ++k) gtv[k] += tmp[k];
  // hv = m x tu
  cross3(tu, g + kHv, tmp);  // d/dm: tu x g
  for (int k = 0; k < 3; ++k) gm[k] += tmp[k];
  cross3(g + kHv, m, tmp);  // d/dtu: g x m
  for (int k = 0; k < 3; ++k) gtu[k] += tmp[k];
  // c = m.n adds g_c * m to the gradient of n, and g_c * n to m
  T gn[3];
  for (int k = 0; k < 3; ++k) {
    gn[k] = g[kN + k] + g[kC] * m[k];
    gm[k] += g[kC] * n[k];
  }
  // n = tu x tv
  cross3(tv, gn, tmp);  // d/dtu: tv x g
  for (int k = 0; k < 3; ++k) gtu[k] += tmp[k];
  cross3(gn, tu, tmp);  // d/dtv: g x tu
  for (int k = 0; k < 3; ++k) gtv[k] += tmp[k];
  // q = (fx mx/mz + cx, fy my/mz + cy), and z = mz in the fallback
  const T iz = T(1) / m[2];
  gm[0] += g[kQx] * fx * iz;
  gm[1] += g[kQy] * fy * iz;
  gm[2] += -(g[kQx] * fx * m[0] + g[kQy] * fy * m[1]) * iz * iz + g[kMz];
  *gop += g[kOpacity];
  for (int k = 0; k < 3; ++k) {
    gcol[k] += g[kColor + k];
    gnrm[k] += g[kNormal + k];
  }
}

// Conservative pixel rectangle [x0, x1) x [y0, y1) (clamped to the image) of a surfel: every
// pixel with rho <= 9 lies inside. It is the box of the projected corners of m +-3 tu +-3 tv
// (the square |u|, |v| <= 3 contains the disc rho3d <= 9; with every corner in front of the near
// plane the square projects inside the corners' hull) unioned with q +- 3 px (rho2d <= 9 means
// |p - q| <= 2.13 px), plus one pixel of slack against rounding; the whole image when a corner has
// z < NEAR (unbounded projection) or a bound is NaN.
template <typename T>
R4D_HD void pixel_rect(const T* m, const T* tu, const T* tv, const T* p, T fx, T fy, T cx, T cy,
                       int width, int height, int* rect) {
  T xmin = p[kQx] - T(3), xmax = p[kQx] + T(3);
  T ymin = p[kQy] - T(3), ymax = p[kQy] + T(3);
  bool whole = false;
  for (int s = 0; s < 4; ++s) {
    const T su = (s & 1) ? T(3) : T(-3);
    const T sv = (s & 2) ? T(3) : T(-3);
    T c[3];
    for (int k = 0; k < 3; ++k) c[k] = m[k] + su * tu[k] + sv * tv[k];
    if (!(c[2] >= T(kNear))) {
      whole = true;
      break;
    }
    const T x = fx * c[0] / c[2] + cx;
    const T y = fy * c[1] / c[2] + cy;
    xmin = x < xmin ? x : xmin;
    xmax = x > xmax ? x : xmax;
    ymin = y < ymin ? y : ymin;
    ymax = y > ymax ? y : ymax;
  }
  if (whole || !(xmin == xmin) || !(xmax == xmax) || !(ymin == ymin) || !(ymax == ymax)) {
    rect[0] = 0;
    rect[1] = width;
    rect[2] = 0;
    rect[3] = height;
    return;
  }
  // Pixel x (centre x + 0.5) is kept when x in [floor(xmin - 1), floor(xmax + 1)].
  const T lo_x = r4d_floor(xmin - T(1)), hi_x = r4d_floor(xmax + T(1)) + T(1);
  const T lo_y = r4d_floor(ymin - T(1)), hi_y = r4d_floor(ymax + T(1)) + T(1);
  rect[0] = lo_x < T(0) ? 0 : (lo_x > T(width) ? width : int(lo_x));
  rect[1] = hi_x < T(0) ? 0 : (hi_x > T(width) ? width : int(hi_x));
  rect[2] = lo_y < T(0) ? 0 : (lo_y > T(height) ? height : int(lo_y));
  rect[3] = hi_y < T(0) ? 0 : (hi_y > T(height) ? height : int(hi_y));
}

// Tiles [tx0, tx1) x [ty0, ty1) overlapped by a pixel rectangle (empty when the rectangle is).
R4D_HD void tiles_of_rect(const int* rect, int tile, int* tiles) {
  if (rect[1] <= rect[0] || rect[3] <= rect[2]) {
    tiles[0] = tiles[1] = tiles[2] = tiles[3] = 0;
    return;
  }
  tiles[0] = rect[0] / tile;
  tiles[1] = (rect[1] - 1) / tile + 1;
  tiles[2] = rect[2] / tile;
  tiles[3] = (rect[3] - 1) / tile + 1;
}

}  // namespace recon4d
