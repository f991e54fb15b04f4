// Fused CPU op of the Mamba mixer in front of the selective scan: depthwise conv + SiLU.
//
//   x      : (batch, L, E), any batch/time strides, channels contiguous (a slice of in_proj's output)
//   weight : (E, K), bias: (E,) or absent
//   causal (default):  out[b, t, e] = silu(bias[e] + sum_k weight[e, k] * x[b, t - (K - 1) + k, e])
//   reverse:           out[b, t, e] = silu(bias[e] + sum_k weight[e, k] * x[b, t + (K - 1) - k, e])
// with zeros outside the sequence. `reverse` is the causal conv of the time-reversed sequence,
// returned in input time order, as the backward direction of a bidirectional mixer needs; the
// fused scan then runs that direction with its own `reverse` flag, so nothing is ever flipped.
// The output is channel-last (batch, L, E), the layout x_proj and the fused scan read.
// The backward recomputes the pre-activation and returns dx (batch, L, E), dweight (E, K) and
// dbias (E,).
//
// Work is split into (batch, block of kTimeTile steps) tasks over torch's intra-op threads; the
// channel loops are written for auto-vectorisation and carry AVX-512 / AVX2 clones.

#include "mixer_ops.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "vector_math.h"

namespace {

using ssamba::sigmoid;

// Time steps per task.
constexpr int64_t kTimeTile = 32;

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

// Position in input time order of the conv's step `step` (steps run backwards with reverse).
template <typename T>
SSAMBA_INLINE int64_t conv_position(const ConvArgs<T>& a, int64_t step) {
  return a.reverse ? a.L - 1 - step : step;
}

template <typename T>
SSAMBA_INLINE const T* conv_input_row(const ConvArgs<T>& a, int64_t b, int64_t step) {
  return a.x + b * a.x_batch_stride + conv_position(a, step) * a.x_time_stride;
}

// Pre-activations of steps [t0, t1) (in the conv's time order); step t goes to row_of(t).
template <typename T, typename RowOf>
SSAMBA_INLINE void conv_pre_activation(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1,
                                       RowOf row_of) {
  const int64_t E = a.E;
  for (int64_t t = t0; t < t1; ++t) {
    T* __restrict__ row = row_of(t);
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
                                     T* __restrict__ out) {
  const int64_t E = a.E;
  T* out_batch = out + b * a.L * E;
  auto row_of = [&](int64_t t) { return out_batch + conv_position(a, t) * E; };
  conv_pre_activation(a, b, t0, t1, row_of);
  for (int64_t t = t0; t < t1; ++t) {
    T* __restrict__ row = row_of(t);
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) row[e] = row[e] * sigmoid(row[e]);
  }
}

// Gradient of the pre-activation for steps [t0, h1) into `grad_pre` (rows of E), using `pre` as
// scratch; then dx rows of steps [t0, t1) and this task's dweight (K, E) / dbias (E) partials.
template <typename T>
SSAMBA_INLINE void conv_backward_body(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1,
                                      const T* grad, T* __restrict__ pre,
                                      T* __restrict__ grad_pre, T* __restrict__ dx,
                                      T* __restrict__ dweight_t, T* __restrict__ dbias) {
  const int64_t E = a.E;
  const int64_t L = a.L;
  const int64_t K = a.K;
  const int64_t h1 = std::min(t1 + K - 1, L);  // dx of step t needs grad_pre up to t + K - 1
  const int64_t rows = h1 - t0;
  conv_pre_activation(a, b, t0, h1, [&](int64_t t) { return pre + (t - t0) * E; });
  for (int64_t t = t0; t < h1; ++t) {
    std::memcpy(grad_pre + (t - t0) * E, grad + (b * L + conv_position(a, t)) * E, sizeof(T) * E);
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

// Non-template entry points, each compiled once per CPU clone.
#define SSAMBA_MIXER_ENTRY_POINTS(T, SUFFIX)                                                     \
  SSAMBA_CPU_CLONES void conv_forward_##SUFFIX(const ConvArgs<T>& a, int64_t b, int64_t t0,      \
                                               int64_t t1, T* out) {                             \
    conv_forward_body<T>(a, b, t0, t1, out);                                                     \
  }                                                                                              \
  SSAMBA_CPU_CLONES void conv_backward_##SUFFIX(const ConvArgs<T>& a, int64_t b, int64_t t0,     \
                                                int64_t t1, const T* grad, T* pre, T* grad_pre,  \
                                                T* dx, T* dweight_t, T* dbias) {                 \
    conv_backward_body<T>(a, b, t0, t1, grad, pre, grad_pre, dx, dweight_t, dbias);              \
  }                                                                                              \
  void conv_forward(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1, T* out) {           \
    conv_forward_##SUFFIX(a, b, t0, t1, out);                                                    \
  }                                                                                              \
  void conv_backward(const ConvArgs<T>& a, int64_t b, int64_t t0, int64_t t1, const T* grad,     \
                     T* pre, T* grad_pre, T* dx, T* dweight_t, T* dbias) {                       \
    conv_backward_##SUFFIX(a, b, t0, t1, grad, pre, grad_pre, dx, dweight_t, dbias);             \
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

// Returns out (batch, L, E), contiguous.
at::Tensor causal_conv1d_silu_forward(const at::Tensor& x, const at::Tensor& weight,
                                      const std::optional<at::Tensor>& bias, bool reverse) {
  check_conv_inputs(x, weight, bias);
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2);
  const at::Tensor weight_t = weight.t().contiguous();
  const std::optional<at::Tensor> bias_c =
      bias.has_value() ? std::optional<at::Tensor>(bias->contiguous()) : std::nullopt;
  at::Tensor out = at::empty({batch, L, E}, x.options());
  const int64_t tiles = time_tiles(L);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "causal_conv1d_silu_forward", [&] {
    const ConvArgs<scalar_t> a = conv_args<scalar_t>(x, weight_t, bias_c, reverse);
    scalar_t* out_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles;
        const int64_t t0 = (task % tiles) * kTimeTile;
        conv_forward(a, b, t0, std::min(t0 + kTimeTile, L), out_ptr);
      }
    });
  });
  return out;
}

// Returns {dx (batch, L, E), dweight (E, K), dbias (E,) or empty}.
std::vector<at::Tensor> causal_conv1d_silu_backward(const at::Tensor& x, const at::Tensor& weight,
                                                    const std::optional<at::Tensor>& bias,
                                                    bool reverse, const at::Tensor& grad) {
  check_conv_inputs(x, weight, bias);
  const int64_t batch = x.size(0), L = x.size(1), E = x.size(2), K = weight.size(1);
  check_float_cpu(grad, "grad", x.scalar_type());
  TORCH_CHECK(grad.sizes() == x.sizes(), "grad must have shape ", x.sizes(), ", got ",
              grad.sizes());
  const at::Tensor g = grad.contiguous();
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
    const scalar_t* g_ptr = g.data_ptr<scalar_t>();
    scalar_t* dx_ptr = dx.data_ptr<scalar_t>();
    scalar_t* dw_ptr = dweight_part.data_ptr<scalar_t>();
    scalar_t* db_ptr = dbias_part.data_ptr<scalar_t>();
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> pre((kTimeTile + K - 1) * E);
      std::vector<scalar_t> grad_pre((kTimeTile + K - 1) * E);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / tiles;
        const int64_t t0 = (task % tiles) * kTimeTile;
        conv_backward(a, b, t0, std::min(t0 + kTimeTile, L), g_ptr, pre.data(), grad_pre.data(),
                      dx_ptr, dw_ptr + task * K * E, db_ptr + task * E);
      }
    });
  });
  at::Tensor empty = at::empty({0}, x.options());
  return {dx, dweight_part.sum(0).t().contiguous(),
          bias.has_value() ? dbias_part.sum(0) : empty};
}

}  // namespace

namespace ssamba {

void bind_mixer_ops(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("causal_conv1d_silu_forward", &causal_conv1d_silu_forward,
        "depthwise causal (or, with reverse, anti-causal) conv + SiLU on channel-last input",
        py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("reverse"));
  m.def("causal_conv1d_silu_backward", &causal_conv1d_silu_backward,
        "gradients of causal_conv1d_silu_forward", py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("reverse"), py::arg("grad"));
}

}  // namespace ssamba
