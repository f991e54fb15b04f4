// Fused CPU ops of the Mamba mixer around the selective scan.
//
// Causal depthwise conv + SiLU, reading the channel-last output of in_proj directly:
//   x      : (batch, L, E), any batch/time strides, channels contiguous (a slice of in_proj's output)
//   weight : (E, K), bias: (E,) or absent
//   out[b, t, e] = silu(bias[e] + sum_k weight[e, k] * x[b, s(t - (K - 1) + k), e])
// where taps before the start of the sequence read zero and s(i) = i, or s(i) = L - 1 - i with
// `reverse` (the conv then runs over the time-reversed sequence and its output is in reversed
// time order, as the backward direction of a bidirectional mixer needs). The result is written
// in both layouts the mixer consumes: (batch, L, E) for x_proj and (batch, E, L) for the scan.
// The backward takes the gradients of both outputs, recomputes the pre-activation and returns
// dx (batch, L, E), dweight (E, K) and dbias (E,).
//
// Direction merge: out[b, t, e] = scale * (y_fwd[b, e, t] + y_bwd[b, e, L - 1 - t]) for the two
// (batch, E, L) scan outputs of a bidirectional mixer (y_bwd in reversed time), written
// channel-last for out_proj; its backward is the transposed, flipped, scaled gradient.
//
// Work is split into (batch, block of kTimeTile steps) tasks over torch's intra-op threads; the
// channel loops are written for auto-vectorisation and carry AVX-512 / AVX2 clones.

#include "mixer_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "vector_math.h"

namespace {

using ssamba::sigmoid;

// Time steps per task.
constexpr int64_t kTimeTile = 32;
// Channels per block in the layout transposes (one cache line of float).
constexpr int64_t kChannelTile = 16;

template <typename T>
struct ConvArgs {
  const T* x;
  int64_t x_batch_stride;
  int64_t x_time_stride;
  const T* weight_t;  // (K, E): the weight transposed so that channels are innermost
  const T* bias;      // nullptr when absent
  int64_t L;
  int64_t E;
  int64_t K;
  bool reverse;
};

template <typename T>
SSAMBA_INLINE const T* conv_input_row(const ConvArgs<T>& a, int64_t b, int64_t step) {
  const int64_t t = a.reverse ? a.L - 1 - step : step;
  return a.x + b * a.x_batch_stride + t * a.x_time_stride;
}

// Pre-activations of steps [t0, t1) (in the conv's time order) into rows of `pre` (E values each).
template <typename T>
SSAMBA_INLINE void conv_pre_activation(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1,
                                       T* __restrict__ pre) {
  const int64_t E = a.E;
  for (int64_t t = t0; t < t1; ++t) {
    T* __restrict__ row = pre + (t - t0) * E;
    if (a.bias != nullptr) {
      const T* __restrict__ bias = a.bias;
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) row[e] = bias[e];
    } else {
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) row[e] = T(0);
    }
    for (int64_t k = std::max<int64_t>(0, a.K - 1 - t); k < a.K; ++k) {
      const T* __restrict__ xs = conv_input_row(a, b, t - (a.K - 1) + k);
      const T* __restrict__ wk = a.weight_t + k * E;
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) row[e] += wk[e] * xs[e];
    }
  }
}

template <typename T>
SSAMBA_INLINE void conv_forward_body(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1,
                                     T* __restrict__ out_cl, T* __restrict__ out_cf) {
  const int64_t E = a.E;
  const int64_t L = a.L;
  T* __restrict__ rows = out_cl + (b * L + t0) * E;
  conv_pre_activation(a, b, t0, t1, rows);
  const int64_t n = (t1 - t0) * E;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) rows[i] = rows[i] * sigmoid(rows[i]);
  for (int64_t e0 = 0; e0 < E; e0 += kChannelTile) {
    const int64_t e1 = std::min(e0 + kChannelTile, E);
    for (int64_t e = e0; e < e1; ++e) {
      T* __restrict__ dst = out_cf + (b * E + e) * L;
      for (int64_t t = t0; t < t1; ++t) dst[t] = rows[(t - t0) * E + e];
    }
  }
}

// Gradient of the pre-activation for steps [t0, h1) into `grad_pre` (rows of E), using `pre` as
// scratch; then dx rows of steps [t0, t1) and this task's dweight (K, E) / dbias (E) partials.
template <typename T>
SSAMBA_INLINE void conv_backward_body(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1,
                                      const T* grad_cl, const T* grad_cf, T* __restrict__ pre,
                                      T* __restrict__ grad_pre, T* __restrict__ dx,
                                      T* __restrict__ dweight_t, T* __restrict__ dbias) {
  const int64_t E = a.E;
  const int64_t L = a.L;
  const int64_t K = a.K;
  const int64_t h1 = std::min(t1 + K - 1, L);  // dx of step t needs grad_pre up to t + K - 1
  const int64_t rows = h1 - t0;
  conv_pre_activation(a, b, t0, h1, pre);
  if (grad_cf != nullptr) {  // transposed read, blocked so that both sides stay in L1
    for (int64_t e0 = 0; e0 < E; e0 += kChannelTile) {
      const int64_t e1 = std::min(e0 + kChannelTile, E);
      for (int64_t t = t0; t < h1; ++t) {
        T* __restrict__ row = grad_pre + (t - t0) * E;
        for (int64_t e = e0; e < e1; ++e) row[e] = grad_cf[(b * E + e) * L + t];
      }
    }
  } else {
    std::fill(grad_pre, grad_pre + rows * E, T(0));
  }
  if (grad_cl != nullptr) {
    const T* __restrict__ src = grad_cl + (b * L + t0) * E;
#pragma omp simd
    for (int64_t i = 0; i < rows * E; ++i) grad_pre[i] += src[i];
  }
#pragma omp simd
  for (int64_t i = 0; i < rows * E; ++i) {
    const T p = pre[i];
    const T s = sigmoid(p);
    grad_pre[i] *= s * (T(1) + p * (T(1) - s));
  }
  for (int64_t t = t0; t < t1; ++t) {
    const T* __restrict__ g = grad_pre + (t - t0) * E;
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) dbias[e] += g[e];
    for (int64_t k = std::max<int64_t>(0, K - 1 - t); k < K; ++k) {
      const T* __restrict__ xs = conv_input_row(a, b, t - (K - 1) + k);
      T* __restrict__ dwk = dweight_t + k * E;
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) dwk[e] += g[e] * xs[e];
    }
    const int64_t source = a.reverse ? L - 1 - t : t;
    T* __restrict__ dx_row = dx + (b * L + source) * E;
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) dx_row[e] = T(0);
    // Input step t feeds output steps t + K - 1 - k through tap k.
    for (int64_t k = 0; k < K; ++k) {
      const int64_t out_step = t + K - 1 - k;
      if (out_step >= L) continue;
      const T* __restrict__ gk = grad_pre + (out_step - t0) * E;
      const T* __restrict__ wk = a.weight_t + k * E;
#pragma omp simd
      for (int64_t e = 0; e < E; ++e) dx_row[e] += wk[e] * gk[e];
    }
  }
}

template <typename T>
SSAMBA_INLINE void merge_forward_body(const T* y_fwd, const T* y_bwd, T scale, int64_t b,
                                      int64_t t0, int64_t t1, int64_t L, int64_t E, T* out) {
  for (int64_t e0 = 0; e0 < E; e0 += kChannelTile) {
    const int64_t e1 = std::min(e0 + kChannelTile, E);
    for (int64_t t = t0; t < t1; ++t) {
      T* __restrict__ row = out + (b * L + t) * E;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t channel = (b * E + e) * L;
        row[e] = (y_fwd[channel + t] + y_bwd[channel + L - 1 - t]) * scale;
      }
    }
  }
}

template <typename T>
SSAMBA_INLINE void merge_backward_body(const T* grad, T scale, int64_t b, int64_t t0, int64_t t1,
                                       int64_t L, int64_t E, T* grad_fwd, T* grad_bwd) {
  for (int64_t e0 = 0; e0 < E; e0 += kChannelTile) {
    const int64_t e1 = std::min(e0 + kChannelTile, E);
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t channel = (b * E + e) * L;
      for (int64_t t = t0; t < t1; ++t) {
        const T g = grad[(b * L + t) * E + e] * scale;
        grad_fwd[channel + t] = g;
        grad_bwd[channel + L - 1 - t] = g;
      }
    }
  }
}

// Non-template entry points, each compiled once per CPU clone.
#define SSAMBA_MIXER_ENTRY_POINTS(T, SUFFIX)                                                     \
  SSAMBA_CPU_CLONES void conv_forward_##SUFFIX(const ConvArgs<T>& a, int64_t b, int64_t t0,      \
                                               int64_t t1, T* out_cl, T* out_cf) {               \
    conv_forward_body<T>(a, b, t0, t1, out_cl, out_cf);                                          \
  }                                                                                              \
  SSAMBA_CPU_CLONES void conv_backward_##SUFFIX(                                                 \
      const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1, const T* grad_cl,                 \
      const T* grad_cf, T* pre, T* grad_pre, T* dx, T* dweight_t, T* dbias) {                    \
    conv_backward_body<T>(a, b, t0, t1, grad_cl, grad_cf, pre, grad_pre, dx, dweight_t, dbias);  \
  }                                                                                              \
  SSAMBA_CPU_CLONES void merge_forward_##SUFFIX(const T* y_fwd, const T* y_bwd, T scale,         \
                                                int64_t b, int64_t t0, int64_t t1, int64_t L,    \
                                                int64_t E, T* out) {                             \
    merge_forward_body<T>(y_fwd, y_bwd, scale, b, t0, t1, L, E, out);                            \
  }                                                                                              \
  SSAMBA_CPU_CLONES void merge_backward_##SUFFIX(const T* grad, T scale, int64_t b, int64_t t0,  \
                                                 int64_t t1, int64_t L, int64_t E, T* grad_fwd,  \
                                                 T* grad_bwd) {                                  \
    merge_backward_body<T>(grad, scale, b, t0, t1, L, E, grad_fwd, grad_bwd);                    \
  }                                                                                              \
  void conv_forward(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1, T* out_cl,          \
                    T* out_cf) {                                                                 \
    conv_forward_##SUFFIX(a, b, t0, t1, out_cl, out_cf);                                         \
  }                                                                                              \
  void conv_backward(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1, const T* grad_cl,  \
                     const T* grad_cf, T* pre, T* grad_pre, T* dx, T* dweight_t, T* dbias) {     \
    conv_backward_##SUFFIX(a, b, t0, t1, grad_cl, grad_cf, pre, grad_pre, dx, dweight_t, dbias); \
  }                                                                                              \
  void merge_forward(const T* y_fwd, const T* y_bwd, T scale, int64_t b, int64_t t0, int64_t t1, \
                     int64_t L, int64_t E, T* out) {                                             \
    merge_forward_##SUFFIX(y_fwd, y_bwd, scale, b, t0, t1, L, E, out);                           \
  }                                                                                              \
  void merge_backward(const T* grad, T scale, int64_t b, int64_t t0, int64_t t1, int64_t L,      \
                      int64_t E, T* grad_fwd, T* grad_bwd) {                                     \
    merge_backward_##SUFFIX(grad, scale, b, t0, t1, L, E, grad_fwd, grad_bwd);                   \
  }

SSAMBA_MIXER_ENTRY_POINTS(float, f32)
SSAMBA_MIXER_ENTRY_POINTS(double, f64)
#undef SSAMBA_MIXER_ENTRY_POINTS

int64_t time_tiles(int64_t L) { return (L + kTimeTile - 1) / kTimeTile; }

void check_float_cpu(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
}

void check_conv_inputs(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 3, "x must be (batch, L, channels), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "causal conv supports float32 and float64, got ", x.scalar_type());
  TORCH_CHECK(x.stride(2) == 1, "x must have contiguous channels (stride 1), got strides ",
              x.strides());
  TORCH_CHECK(x.size(1) > 0, "x must have at least one time step");
  check_float_cpu(x, "x", x.scalar_type());
  check_float_cpu(weight, "weight", x.scalar_type());
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == x.size(2) && weight.size(1) > 0,
              "weight must be (channels=", x.size(2), ", K), got ", weight.sizes());
  if (bias.has_value()) {
    check_float_cpu(*bias, "bias", x.scalar_type());
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(2), "bias must be (", x.size(2),
                ",), got ", bias->sizes());
  }
}

template <typename T>
ConvArgs<T> conv_args(const at::Tensor& x, const at::Tensor& weight_t,
                      const std::optional<at::Tensor>& bias, bool reverse) {
  ConvArgs<T> a;
  a.x = x.data_ptr<T>();
  a.x_batch_stride = x.stride(0);
  a.x_time_stride = x.stride(1);
  a.weight_t = weight_t.data_ptr<T>();
  a.bias = bias.has_value() ? bias->data_ptr<T>() : nullptr;
  a.L = x.size(1);
  a.E = x.size(2);
  a.K = weight_t.size(0);
  a.reverse = reverse;
  return a;
}

// Returns {out (batch, L, E), out (batch, E, L)}: the same values in both layouts.
std::vector<at::Tensor> causal_conv1d_silu_forward(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias,
                                                   bool reverse) {
  check_conv_inputs(x, weight, bias);
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2);
  const at::Tensor weight_t = weight.t().contiguous();
  const std::optional<at::Tensor> bias_c =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor out_cl = at::empty({batch, L, E}, x.options());
  at::Tensor out_cf = at::empty({batch, E, L}, x.options());
  const int64_t tiles = time_tiles(L);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_forward", [&] {
    const ConvArgs<scalar_t> a = conv_args<scalar_t>(x, weight_t, bias_c, reverse);
    scalar_t* cl = out_cl.data_ptr<scalar_t>();
    scalar_t* cf = out_cf.data_ptr<scalar_t>();
    at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles;
        const int64_t t0 = (task % tiles) * kTimeTile;
        conv_forward(a, b, t0, std::min(t0 + kTimeTile, L), cl, cf);
      }
    });
  });
  return {out_cl, out_cf};
}

// Returns {dx (batch, L, E), dweight (E, K), dbias (E,) or empty}. Either gradient may be absent.
std::vector<at::Tensor> causal_conv1d_silu_backward(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    bool reverse,
                                                    const std::optional<at::Tensor>& grad_cl,
                                                    const std::optional<at::Tensor>& grad_cf) {
  check_conv_inputs(x, weight, bias);
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2), K = weight.size(1);
  auto checked = [&](const std::optional<at::Tensor>& g, at::IntArrayRef shape, const char* name) {
    if (!g.has_value()) return std::optional<at::Tensor>();
    check_float_cpu(*g, name, x.scalar_type());
    TORCH_CHECK(g->sizes() == shape, name, " must have shape ", shape, ", got ", g->sizes());
    return std::optional<at::Tensor>(g->contiguous());
  };
  const auto g_cl = checked(grad_cl, {batch, L, E}, "grad of the (batch, L, E) output");
  const auto g_cf = checked(grad_cf, {batch, E, L}, "grad of the (batch, E, L) output");
  const at::Tensor weight_t = weight.t().contiguous();
  const std::optional<at::Tensor> bias_c =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  const int64_t tiles = time_tiles(L);
  const int64_t tasks = batch * tiles;
  at::Tensor dx = at::empty({batch, L, E}, x.options());
  at::Tensor dweight_part = at::zeros({tasks, K, E}, x.options());
  at::Tensor dbias_part = at::zeros({tasks, E}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_backward", [&] {
    const ConvArgs<scalar_t> a = conv_args<scalar_t>(x, weight_t, bias_c, reverse);
    const scalar_t* gcl = g_cl.has_value() ? g_cl->data_ptr<scalar_t>() : nullptr;
    const scalar_t* gcf = g_cf.has_value() ? g_cf->data_ptr<scalar_t>() : nullptr;
    scalar_t* dx_ptr = dx.data_ptr<scalar_t>();
    scalar_t* dw_ptr = dweight_part.data_ptr<scalar_t>();
    scalar_t* db_ptr = dbias_part.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> pre((kTimeTile + K - 1) * E);
      std::vector<scalar_t> grad_pre((kTimeTile + K - 1) * E);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles;
        const int64_t t0 = (task % tiles) * kTimeTile;
        conv_backward(a, b, t0, std::min(t0 + kTimeTile, L), gcl, gcf, pre.data(),
                      grad_pre.data(), dx_ptr, dw_ptr + task * K * E, db_ptr + task * E);
      }
    });
  });
  at::Tensor empty = at::empty({0}, x.options());
  return {dx, dweight_part.sum(0).t().contiguous(),
          bias.has_value() ? dbias_part.sum(0) : empty};
}

void check_merge_input(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.dim() == 3, name, " must be (batch, E, L), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
  check_float_cpu(t, name, like.scalar_type());
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// out (batch, L, E) = scale * (y_fwd + y_bwd reversed in time), transposed.
at::Tensor merge_directions_forward(const at::Tensor& y_fwd, const at::Tensor& y_bwd,
                                    double scale) {
  check_merge_input(y_fwd, y_fwd, "y_fwd");
  check_merge_input(y_bwd, y_fwd, "y_bwd");
  const int64_t batch = y_fwd.size(0), E = y_fwd.size(1), L = y_fwd.size(2);
  at::Tensor out = at::empty({batch, L, E}, y_fwd.options());
  const int64_t tiles = time_tiles(L);
  AT_DISPATCH_FLOATING_TYPES(y_fwd.scalar_type(), "merge_directions_forward", [&] {
    const scalar_t* yf = y_fwd.data_ptr<scalar_t>();
    const scalar_t* yb = y_bwd.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t t0 = (task % tiles) * kTimeTile;
        merge_forward(yf, yb, static_cast<scalar_t>(scale), task / tiles, t0,
                      std::min(t0 + kTimeTile, L), L, E, o);
      }
    });
  });
  return out;
}

// Returns {grad y_fwd, grad y_bwd}, both (batch, E, L).
std::vector<at::Tensor> merge_directions_backward(const at::Tensor& grad, double scale) {
  TORCH_CHECK(grad.dim() == 3, "grad must be (batch, L, E), got ", grad.sizes());
  TORCH_CHECK(grad.scalar_type() == at::kFloat || grad.scalar_type() == at::kDouble,
              "grad must be float32 or float64, got ", grad.scalar_type());
  check_float_cpu(grad, "grad", grad.scalar_type());
  const at::Tensor g = grad.contiguous();
  const int64_t batch = g.size(0), L = g.size(1), E = g.size(2);
  at::Tensor grad_fwd = at::empty({batch, E, L}, g.options());
  at::Tensor grad_bwd = at::empty({batch, E, L}, g.options());
  const int64_t tiles = time_tiles(L);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "merge_directions_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* gf = grad_fwd.data_ptr<scalar_t>();
    scalar_t* gb = grad_bwd.data_ptr<scalar_t>();
    at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t t0 = (task % tiles) * kTimeTile;
        merge_backward(gp, static_cast<scalar_t>(scale), task / tiles, t0,
                       std::min(t0 + kTimeTile, L), L, E, gf, gb);
      }
    });
  });
  return {grad_fwd, grad_bwd};
}

}  // namespace

namespace ssamba {

void bind_mixer_ops(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("causal_conv1d_silu_forward", &causal_conv1d_silu_forward,
        "causal depthwise conv + SiLU on channel-last input; returns both layouts", py::arg("x"),
        py::arg("weight"), py::arg("bias"), py::arg("reverse"));
  m.def("causal_conv1d_silu_backward", &causal_conv1d_silu_backward,
        "gradients of causal_conv1d_silu_forward", py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("reverse"), py::arg("grad_cl"), py::arg("grad_cf"));
  m.def("merge_directions_forward", &merge_directions_forward,
        "scale * (y_fwd + time-reversed y_bwd), transposed to (batch, L, E)", py::arg("y_fwd"),
        py::arg("y_bwd"), py::arg("scale"));
  m.def("merge_directions_backward", &merge_directions_backward,
        "gradients of merge_directions_forward", py::arg("grad"), py::arg("scale"));
}

}  // namespace ssamba
