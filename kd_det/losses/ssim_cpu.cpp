// Fused SSIM loss kernel for CPU float32: for each (H, W) slice, the min-max normalisation,
// the separable Gaussian blur of x, y, x^2 + y^2 and x y, SSIM and its three partial
// derivatives, their transposed blur and dL/dx, all in a per-thread buffer that stays in the
// cache (kd_det/losses/ssim.py compiles it on first use and falls back to PyTorch without it).
//
// A blur along one side is described by its taps w (k of them) and a table src of length
// n_out + k - 1 mapping each padded position to its source index (reflect padding folded in),
// out[o] = sum_t w[t] in[src[o + t]]; no blur is the single tap 1.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <thread>
#include <vector>

namespace {

// vectorised for AVX-512, AVX2 and baseline x86-64, chosen at load time
#if defined(__x86_64__) && defined(__GNUC__)
#define KD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KD_CLONES
#endif

// out[o] = sum_t w[t] rows[t][o], o < n, with the taps known at compile time (K > 0) or not
// (K = 0)
template <int K>
KD_CLONES
void combine_k(const float* const* __restrict rows, const float* __restrict w, int64_t k,
               float* __restrict out, int64_t n) {
  if (K > 0) {
    const float* r[K > 0 ? K : 1];
    float wk[K > 0 ? K : 1];
    for (int t = 0; t < K; ++t) { r[t] = rows[t]; wk[t] = w[t]; }
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) {
      float acc = 0.f;
      for (int t = 0; t < K; ++t) acc += wk[t] * r[t][o];
      out[o] = acc;
    }
    return;
  }
  for (int64_t o = 0; o < n; ++o) out[o] = 0.f;
  for (int64_t t = 0; t < k; ++t) {
    const float wt = w[t];
    const float* rt = rows[t];
#pragma omp simd
    for (int64_t o = 0; o < n; ++o) out[o] += wt * rt[o];
  }
}

// the same for each of `maps` maps: out[m][o] = sum_t w[t] rows[m * k + t][o]
void combine(const float* const* rows, const float* w, int64_t k, float* const* out,
             int64_t n, int maps) {
  for (int m = 0; m < maps; ++m) {
    if (k == 11) combine_k<11>(rows + m * k, w, k, out[m], n);
    else combine_k<0>(rows + m * k, w, k, out[m], n);
  }
}

// out[m][o] = sum_t w[t] in[m][o + t]: combine over the k shifted copies of each row
void correlate(const float* const* in, const float* w, int64_t k, float* const* out,
               int64_t n, int maps, std::vector<const float*>& rows) {
  for (int m = 0; m < maps; ++m)
    for (int64_t t = 0; t < k; ++t) rows[m * k + t] = in[m] + t;
  combine(rows.data(), w, k, out, n, maps);
}

KD_CLONES
float ssim_row(const float* __restrict mx, const float* __restrict my,
               const float* __restrict esq, const float* __restrict exy, float c1, float c2,
               float* __restrict dmu, float* __restrict dsq, float* __restrict dxy, int64_t n,
               bool partials) {
  float acc = 0.f;
#pragma omp simd reduction(+:acc)
  for (int64_t o = 0; o < n; ++o) {
    const float ux = mx[o], uy = my[o];
    const float ln = 2.f * ux * uy + c1;
    const float ld = ux * ux + uy * uy + c1;
    const float cn = 2.f * exy[o] - ln + c1 + c2;
    const float cd = esq[o] - ld + c1 + c2;
    const float inv = 1.f / (ld * cd);
    const float s = ln * cn * inv;
    acc += s;
    if (partials) {
      dxy[o] = ln * inv;
      dsq[o] = s / cd;
      dmu[o] = (uy * (cn - ln) + ux * s * (ld - cd)) * inv;
    }
  }
  return acc;
}

KD_CLONES
void grad_row(const float* __restrict gmu, const float* __restrict gsq,
              const float* __restrict gxy, const float* __restrict xr,
              const float* __restrict yr, float scale, float* __restrict out, int64_t n,
              float* sum_g, float* sum_gx) {
  float sg = 0.f, sgx = 0.f;
#pragma omp simd reduction(+:sg, sgx)
  for (int64_t w = 0; w < n; ++w) {
    const float g = gmu[w] - xr[w] * gsq[w] + yr[w] * gxy[w];
    sg += g;
    sgx += g * xr[w];
    out[w] = g * scale;
  }
  *sum_g = sg;
  *sum_gx = sgx;
}

// min and max of v[0..n) and the first positions holding them (lane-wise, so it vectorises)
KD_CLONES
void min_max(const float* __restrict v, int64_t n, float* lo, float* hi, int64_t* arg_lo,
             int64_t* arg_hi) {
  constexpr int L = 16;
  float mn[L], mx[L];
  for (int l = 0; l < L; ++l) mn[l] = mx[l] = v[0];
  int64_t i = 0;
  for (; i + L <= n; i += L) {
#pragma omp simd
    for (int l = 0; l < L; ++l) {
      const float e = v[i + l];
      mn[l] = e < mn[l] ? e : mn[l];
      mx[l] = e > mx[l] ? e : mx[l];
    }
  }
  float a = v[0], b = v[0];
  for (; i < n; ++i) {
    a = v[i] < a ? v[i] : a;
    b = v[i] > b ? v[i] : b;
  }
  for (int l = 0; l < L; ++l) {
    a = mn[l] < a ? mn[l] : a;
    b = mx[l] > b ? mx[l] : b;
  }
  *lo = a;
  *hi = b;
  if (arg_lo == nullptr) return;
  for (int which = 0; which < 2; ++which) {
    const float target = which == 0 ? a : b;
    int64_t j = 0;
    for (; j + L <= n; j += L) {  // find the block, then the position
      int hit = 0;
#pragma omp simd reduction(|:hit)
      for (int l = 0; l < L; ++l) hit |= v[j + l] == target;
      if (hit) break;
    }
    while (j < n && v[j] != target) ++j;
    *(which == 0 ? arg_lo : arg_hi) = j < n ? j : 0;  // NaN input: no position holds it
  }
}

struct Blur {
  const float* w;      // taps
  const float* wflip;  // taps reversed
  int64_t k;
  const int64_t* src;  // padded position -> source index, length n_out + k - 1
  int64_t n_in, n_out;
  int64_t lo, hi, off;  // the longest run of positions with src[p] = p - off: [lo, hi)
};

Blur make_blur(const at::Tensor& window, const at::Tensor& flipped, const at::Tensor& src,
               int64_t n_in, int64_t n_out) {
  Blur blur{window.data_ptr<float>(), flipped.data_ptr<float>(), window.size(0),
            src.data_ptr<int64_t>(), n_in, n_out, 0, 0, 0};
  const int64_t padded = n_out + blur.k - 1;
  for (int64_t start = 0, p = 1; p <= padded; ++p) {
    if (p < padded && blur.src[p] == blur.src[p - 1] + 1) continue;
    if (p - start > blur.hi - blur.lo) {
      blur.lo = start;
      blur.hi = p;
      blur.off = start - blur.src[start];
    }
    start = p;
  }
  return blur;
}

// row[src[p]] for p < n into out, the run [lo, hi) as one contiguous copy
void gather(const float* __restrict row, const Blur& b, float* __restrict out, int64_t n) {
  for (int64_t p = 0; p < std::min(b.lo, n); ++p) out[p] = row[b.src[p]];
  std::copy(row + b.lo - b.off, row + std::min(b.hi, n) - b.off, out + b.lo);
  for (int64_t p = b.hi; p < n; ++p) out[p] = row[b.src[p]];
}

// out[src[p]] += in[p] for p < n (out zeroed first), the run [lo, hi) vectorised
KD_CLONES
void fold(const float* __restrict in, const Blur& b, float* __restrict out, int64_t n_out,
          int64_t n) {
  for (int64_t w = 0; w < n_out; ++w) out[w] = 0.f;
  const int64_t hi = std::min(b.hi, n), off = b.off;
#pragma omp simd
  for (int64_t p = b.lo; p < hi; ++p) out[p - off] += in[p];
  for (int64_t p = 0; p < std::min(b.lo, n); ++p) out[b.src[p]] += in[p];
  for (int64_t p = b.hi; p < n; ++p) out[b.src[p]] += in[p];
}

// One slice. With eps >= 0 the min-max statistics are this slice's own (written to x_low,
// x_inv, y_low, y_inv, arg_lo, arg_hi); otherwise they are read from them.
KD_CLONES
void slice(const float* x, const float* y, float* x_low, float* x_inv, float* y_low,
           float* y_inv, int64_t* arg_lo, int64_t* arg_hi, float eps, const Blur& bh,
           const Blur& bw, float c1, float c2, bool needs_grad, float grad_scale, float* grad,
           double* ssim_sum, double* sum_g, double* sum_gx, std::vector<float>& buf,
           std::vector<const float*>& ptrs) {
  const int64_t H = bh.n_in, W = bw.n_in, Ho = bh.n_out, Wo = bw.n_out;
  const int64_t Wp = Wo + bw.k - 1, Hp = Ho + bh.k - 1, Wz = Wo + 2 * (bw.k - 1);
  const int64_t HW = H * W, HWo = H * Wo, HoWo = Ho * Wo;
  buf.resize(2 * HW + 4 * HWo + 3 * HoWo + 3 * HWo + 4 * Wp + 3 * W + 4 * Wo + 3 * Wz + 3 * Wp);
  ptrs.resize(4 * std::max(bh.k, bw.k));
  float* xn = buf.data();
  float* yn = xn + HW;
  float* hb = yn + HW;          // 4 x H x Wo: horizontal pass
  float* pt = hb + 4 * HWo;     // 3 x Ho x Wo: halved partials of SSIM
  float* gv = pt + 3 * HoWo;    // 3 x H x Wo: adjoint of the vertical pass
  float* pad = gv + 3 * HWo;    // 4 x Wp
  float* gin = pad + 4 * Wp;    // 3 x W
  float* row = gin + 3 * W;     // 4 x Wo
  float* zpad = row + 4 * Wo;   // 3 x Wz
  float* gp = zpad + 3 * Wz;    // 3 x Wp
  if (eps >= 0.f) {
    float x_hi, y_hi;
    min_max(x, HW, x_low, &x_hi, arg_lo, arg_hi);
    min_max(y, HW, y_low, &y_hi, nullptr, nullptr);
    *x_inv = 1.f / (x_hi - *x_low + eps);
    *y_inv = 1.f / (y_hi - *y_low + eps);
  }
  const float xl = *x_low, xi = *x_inv, yl = *y_low, yi = *y_inv;
  grad_scale *= xi;
#pragma omp simd
  for (int64_t i = 0; i < HW; ++i) {
    xn[i] = (x[i] - xl) * xi;
    yn[i] = (y[i] - yl) * yi;
  }
  float* p0 = pad; float* p1 = pad + Wp; float* p2 = pad + 2 * Wp; float* p3 = pad + 3 * Wp;
  const float* pads[4] = {p0, p1, p2, p3};
  for (int64_t h = 0; h < H; ++h) {
    const float* xr = xn + h * W;
    const float* yr = yn + h * W;
    gather(xr, bw, p0, Wp);
    gather(yr, bw, p1, Wp);
#pragma omp simd
    for (int64_t p = 0; p < Wp; ++p) {
      p2[p] = p0[p] * p0[p] + p1[p] * p1[p];
      p3[p] = p0[p] * p1[p];
    }
    float* outs[4] = {hb + h * Wo, hb + HWo + h * Wo, hb + 2 * HWo + h * Wo,
                      hb + 3 * HWo + h * Wo};
    correlate(pads, bw.w, bw.k, outs, Wo, 4, ptrs);
  }
  double total = 0.0;
  float* rows4[4] = {row, row + Wo, row + 2 * Wo, row + 3 * Wo};
  for (int64_t oh = 0; oh < Ho; ++oh) {
    for (int m = 0; m < 4; ++m)
      for (int64_t t = 0; t < bh.k; ++t) ptrs[m * bh.k + t] = hb + m * HWo + bh.src[oh + t] * Wo;
    combine(ptrs.data(), bh.w, bh.k, rows4, Wo, 4);
    total += ssim_row(row, row + Wo, row + 2 * Wo, row + 3 * Wo, c1, c2, pt + oh * Wo,
                      pt + HoWo + oh * Wo, pt + 2 * HoWo + oh * Wo, Wo, needs_grad);
  }
  *ssim_sum = total;
  if (!needs_grad) return;
  // adjoint of the vertical pass: padded row p gets sum_t w[t] P[p - t], folded onto src[p]
  for (int64_t i = 0; i < 3 * HWo; ++i) gv[i] = 0.f;
  float* rows3[3] = {row, row + Wo, row + 2 * Wo};
  for (int64_t p = 0; p < Hp; ++p) {
    const int64_t t_lo = std::max<int64_t>(0, p - Ho + 1), t_hi = std::min<int64_t>(bh.k, p + 1);
    const int64_t taps = t_hi - t_lo;
    for (int m = 0; m < 3; ++m)
      for (int64_t t = t_lo; t < t_hi; ++t) ptrs[m * taps + t - t_lo] = pt + m * HoWo + (p - t) * Wo;
    combine(ptrs.data(), bh.w + t_lo, taps, rows3, Wo, 3);
    for (int m = 0; m < 3; ++m) {
      float* out = gv + m * HWo + bh.src[p] * Wo;
      const float* in = rows3[m];
#pragma omp simd
      for (int64_t o = 0; o < Wo; ++o) out[o] += in[o];
    }
  }
  // adjoint of the horizontal pass, then dS/dx_n / 2 = g_mu - x_n g_sq + y_n g_xy
  double tg = 0.0, tgx = 0.0;
  for (int64_t i = 0; i < 3 * Wz; ++i) zpad[i] = 0.f;
  const float* zpads[3] = {zpad, zpad + Wz, zpad + 2 * Wz};
  float* gps[3] = {gp, gp + Wp, gp + 2 * Wp};
  for (int64_t h = 0; h < H; ++h) {
    // gp[p] = sum_t w[t] in[p - t]: the zero-padded row correlated with the flipped taps
    for (int m = 0; m < 3; ++m)
      std::copy(gv + m * HWo + h * Wo, gv + m * HWo + h * Wo + Wo, zpad + m * Wz + bw.k - 1);
    correlate(zpads, bw.wflip, bw.k, gps, Wp, 3, ptrs);
    for (int m = 0; m < 3; ++m) fold(gps[m], bw, gin + m * W, W, Wp);
    float sg, sgx;
    grad_row(gin, gin + W, gin + 2 * W, xn + h * W, yn + h * W, grad_scale, grad + h * W, W,
             &sg, &sgx);
    tg += sg;
    tgx += sgx;
  }
  *sum_g = tg;
  *sum_gx = tgx;
}

}  // namespace

// x, y: (S, H, W) float32. x_low, x_inv, y_low, y_inv: (S,) float32 min-max statistics, read,
// or with eps >= 0 computed per slice and written, with the positions of each slice's min and
// max of x into arg_low, arg_high (S,) int64. Returns the per slice sums of SSIM, dL/dx as
// grad_scale * x_inv * g with g = d sum(S) / d x_n halved (needs_grad), and per slice sums of
// g and g x_n (float64).
std::vector<at::Tensor> ssim_forward(const at::Tensor& x, const at::Tensor& y, at::Tensor x_low,
                                     at::Tensor x_inv, at::Tensor y_low, at::Tensor y_inv,
                                     at::Tensor arg_low, at::Tensor arg_high, double eps,
                                     const at::Tensor& window_h, const at::Tensor& src_h,
                                     const at::Tensor& window_w, const at::Tensor& src_w,
                                     int64_t out_h, int64_t out_w, double c1, double c2,
                                     bool needs_grad, double grad_scale) {
  TORCH_CHECK(x.dtype() == at::kFloat && y.dtype() == at::kFloat && x.is_contiguous() &&
              y.is_contiguous() && x.sizes() == y.sizes() && x.dim() == 3,
              "ssim_forward: x and y must be contiguous float32 (S, H, W) of the same shape");
  const int64_t S = x.size(0), H = x.size(1), W = x.size(2);
  auto dopt = x.options().dtype(at::kDouble);
  at::Tensor ssim_sum = at::zeros({S}, dopt);
  at::Tensor sum_g = at::zeros({S}, dopt), sum_gx = at::zeros({S}, dopt);
  at::Tensor grad = needs_grad ? at::empty_like(x) : at::Tensor();
  at::Tensor flip_h = window_h.flip(0).contiguous(), flip_w = window_w.flip(0).contiguous();
  const Blur bh = make_blur(window_h, flip_h, src_h, H, out_h);
  const Blur bw = make_blur(window_w, flip_w, src_w, W, out_w);
  const float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  float* xl = x_low.data_ptr<float>();
  float* xi = x_inv.data_ptr<float>();
  float* yl = y_low.data_ptr<float>();
  float* yi = y_inv.data_ptr<float>();
  int64_t* al = eps >= 0 ? arg_low.data_ptr<int64_t>() : nullptr;
  int64_t* ah = eps >= 0 ? arg_high.data_ptr<int64_t>() : nullptr;
  float* gp = needs_grad ? grad.data_ptr<float>() : nullptr;
  double* ss = ssim_sum.data_ptr<double>();
  double* sg = sum_g.data_ptr<double>();
  double* sgx = sum_gx.data_ptr<double>();
  auto work = [&](int64_t begin, int64_t end) {
    std::vector<float> buf;
    std::vector<const float*> ptrs;
    for (int64_t s = begin; s < end; ++s) {
      slice(xp + s * H * W, yp + s * H * W, xl + s, xi + s, yl + s, yi + s,
            al != nullptr ? al + s : nullptr, ah != nullptr ? ah + s : nullptr, (float)eps, bh,
            bw, (float)c1, (float)c2, needs_grad, (float)grad_scale,
            needs_grad ? gp + s * H * W : nullptr, ss + s, sg + s, sgx + s, buf, ptrs);
    }
  };
  // torch's thread count, in plain threads (no second OpenMP runtime next to torch's)
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), S));
  const int64_t per_thread = (S + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (int64_t begin = per_thread; begin < S; begin += per_thread)
    pool.emplace_back(work, begin, std::min(S, begin + per_thread));
  work(0, std::min(S, per_thread));
  for (auto& thread : pool) thread.join();
  return {ssim_sum, grad, sum_g, sum_gx};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ssim_forward", &ssim_forward, "fused SSIM value and gradient over (S, H, W) slices");
}
