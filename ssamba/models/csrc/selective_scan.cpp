// Fused CPU selective scan (Mamba-1 recurrence) with an exact, memory-light backward.
//
// Layout (all tensors contiguous, one floating dtype T):
//   u, delta, z, dout : (batch, dim, L)
//   A                 : (dim, N)
//   B, C              : (batch, L, N)   -- transposed by the caller so that N is innermost
//   D, delta_bias     : (dim,) or empty
//
// Per (batch, dim) channel and state n:
//   dt_t  = softplus(delta_t + bias) or delta_t + bias
//   h_t   = exp(dt_t * A_n) * h_{t-1} + dt_t * B_tn * u_t
//   y_t   = sum_n C_tn * h_tn + D * u_t,   out_t = y_t * silu(z_t) when z is given.
//
// The forward keeps the state only at the start of every block of `interval` steps. The
// backward recomputes one block at a time from that checkpoint (states and decays in a small
// per-thread buffer) and runs the reverse recurrence g_{t-1} = a_t * g_t + C_{t-1} * dy_{t-1}.
// Channels are processed in parallel with OpenMP; the state loop over N is written for
// auto-vectorisation. x86-64 Linux builds carry AVX-512 / AVX2 clones of the channel kernels,
// chosen at load time, so the extension stays portable without -march=native.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <optional>
#include <vector>

#include "mixer_ops.h"
#include "vector_math.h"

namespace {

// softplus with the same threshold as torch.nn.functional.softplus (linear above 20).
constexpr double kSoftplusThreshold = 20.0;
// State sizes with a compile-time specialised kernel (others use the generic one).
constexpr int kSpecialisedStateSize = 16;

using ssamba::fast_exp;
using ssamba::sigmoid;

// softplus with torch's threshold (identity above 20). The float version is branch-free so
// that it vectorises: max(x, 0) + log1p(exp(-|x|)), with log1p(e) = 2 atanh(e / (2 + e)) and
// the atanh series up to s^13 (|s| <= 1/3, truncation error < 2e-8 relative).
SSAMBA_INLINE float softplus(float x) {
  const float e = fast_exp(-std::fabs(x));
  const float s = e / (2.0f + e);
  const float s2 = s * s;
  float p = 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  const float positive_part = x > 0.0f ? x : 0.0f;
  const float result = positive_part + 2.0f * s * p;
  return x > float(kSoftplusThreshold) ? x : result;
}
SSAMBA_INLINE double softplus(double x) {
  return x > kSoftplusThreshold ? x : std::log1p(std::exp(x));
}

// d softplus / dx, matching torch's softplus backward (1 above the threshold).
template <typename T>
SSAMBA_INLINE T softplus_grad(T x) {
  return x > T(kSoftplusThreshold) ? T(1) : sigmoid(x);
}

// Sum of N values. For a compile-time power-of-two N it is a pairwise tree, which vectorises;
// an in-order sum would be a serial chain of scalar adds (no -ffast-math here).
template <typename T, int NS>
SSAMBA_INLINE T sum_states(T* __restrict__ v, int64_t N) {
  if constexpr (NS > 0 && (NS & (NS - 1)) == 0) {
    for (int width = NS / 2; width > 0; width /= 2) {
#pragma omp simd
      for (int n = 0; n < width; ++n) v[n] += v[n + width];
    }
    return v[0];
  } else {
    T total = T(0);
#pragma omp simd reduction(+ : total)
    for (int64_t n = 0; n < N; ++n) total += v[n];
    return total;
  }
}

// dt for `len` steps: delta + bias, through softplus if requested.
template <typename T>
SSAMBA_INLINE void discretise(const T* __restrict__ delta, T bias, bool use_softplus, int64_t len,
                              T* __restrict__ dt) {
  if (use_softplus) {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dt[i] = softplus(delta[i] + bias);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) dt[i] = delta[i] + bias;
  }
}

// ---------------------------------------------------------------------------------------------
// Per-channel arguments. Pointers are already offset to the channel (u, delta, z, out, ...) or
// to its batch (B, C: (L, N)) / its dim (A: (N,)).

template <typename T>
struct ForwardChannel {
  const T* u;
  const T* delta;
  const T* A;
  const T* B;
  const T* C;
  const T* z;       // nullptr when no gating
  T D;              // 0 when no skip term
  T bias;           // 0 when no delta_bias
  bool softplus;
  int64_t L;
  int64_t N;
  int64_t interval;
  T* out;
  T* y_pre_gate;    // nullptr unless z is given and the backward will run
  T* checkpoints;   // (ceil(L / interval), N) or nullptr when no backward will run
  T* work;          // forward_work_size(N, interval) scratch values
};

template <typename T>
struct BackwardChannel {
  const T* u;
  const T* delta;
  const T* A;
  const T* B;
  const T* C;
  const T* z;
  const T* y_pre_gate;
  const T* dout;
  const T* checkpoints;
  T D;
  T bias;
  bool softplus;
  int64_t L;
  int64_t N;
  int64_t interval;
  T* du;
  T* ddelta;
  T* dz;            // nullptr when no gating
  T* dB;            // (L, N) accumulator shared by the channels of one task
  T* dC;            // (L, N) accumulator
  T* dA;            // (N,) written
  T* dD;            // scalar written
  T* dbias;         // scalar written
  T* work;          // backward_work_size(N, interval) scratch values
};

int64_t forward_work_size(int64_t N, int64_t interval) {
  // dt and y per step of a block; state and products (generic N only)
  return 2 * interval + 2 * N;
}

int64_t backward_work_size(int64_t N, int64_t interval) {
  // dt, dy, d(dt) per step; decays (K x N); states (K + 1 x N); g, dA and two product
  // vectors (generic N only)
  return 3 * interval + interval * N + (interval + 1) * N + 4 * N;
}

template <typename T, int NS>
SSAMBA_INLINE void forward_channel_body(const ForwardChannel<T>& c) {
  const int64_t N = NS > 0 ? NS : c.N;
  const int64_t K = c.interval;
  T* __restrict__ dt = c.work;  // (K,)
  T* __restrict__ y = dt + K;   // (K,)
  // Compile-time N keeps the state in registers; generic N lives in the work buffer.
  T h_local[NS > 0 ? NS : 1];
  T prod_local[NS > 0 ? NS : 1];
  T* __restrict__ h = NS > 0 ? h_local : y + K;
  T* __restrict__ prod = NS > 0 ? prod_local : y + K + N;
  const T* __restrict__ A = c.A;
  for (int64_t n = 0; n < N; ++n) h[n] = T(0);
  for (int64_t t0 = 0; t0 < c.L; t0 += K) {
    const int64_t len = std::min(K, c.L - t0);
    if (c.checkpoints != nullptr) std::memcpy(c.checkpoints + (t0 / K) * N, h, sizeof(T) * N);
    discretise(c.delta + t0, c.bias, c.softplus, len, dt);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = t0 + i;
      const T dti = dt[i];
      const T dtu = dti * c.u[t];
      const T* __restrict__ Bt = c.B + t * N;
      const T* __restrict__ Ct = c.C + t * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        const T hn = fast_exp(dti * A[n]) * h[n] + dtu * Bt[n];
        h[n] = hn;
        prod[n] = Ct[n] * hn;
      }
      y[i] = sum_states<T, NS>(prod, N);
    }
    const T* __restrict__ u = c.u + t0;
    T* __restrict__ out = c.out + t0;
    if (c.z == nullptr) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) out[i] = y[i] + c.D * u[i];
    } else {
      const T* __restrict__ z = c.z + t0;
      if (c.y_pre_gate != nullptr) {
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) c.y_pre_gate[t0 + i] = y[i] + c.D * u[i];
      }
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) out[i] = (y[i] + c.D * u[i]) * (z[i] * sigmoid(z[i]));
    }
  }
}

template <typename T, int NS>
SSAMBA_INLINE void backward_channel_body(const BackwardChannel<T>& c) {
  const int64_t N = NS > 0 ? NS : c.N;
  const int64_t K = c.interval;
  T* __restrict__ dts = c.work;                // (K,)
  T* __restrict__ dys = dts + K;               // (K,) gradient w.r.t. the pre-gate output
  T* __restrict__ ddts = dys + K;              // (K,) gradient w.r.t. dt
  T* __restrict__ decay = ddts + K;            // (K, N)
  T* __restrict__ states = decay + K * N;      // (K + 1, N): states[0] = block start
  T* __restrict__ generic = states + (K + 1) * N;
  T g_local[NS > 0 ? NS : 1];
  T dA_local[NS > 0 ? NS : 1];
  T gB_local[NS > 0 ? NS : 1];
  T Aw_local[NS > 0 ? NS : 1];
  T* __restrict__ g = NS > 0 ? g_local : generic;  // a_{t+1} * dL/dh_{t+1}
  T* __restrict__ dA = NS > 0 ? dA_local : generic + N;
  T* __restrict__ gB = NS > 0 ? gB_local : generic + 2 * N;
  T* __restrict__ Aw = NS > 0 ? Aw_local : generic + 3 * N;
  const T* __restrict__ A = c.A;
  for (int64_t n = 0; n < N; ++n) {
    g[n] = T(0);
    dA[n] = T(0);
  }
  double dD = 0.0;
  double dbias = 0.0;
  const int64_t num_blocks = (c.L + K - 1) / K;
  for (int64_t block = num_blocks - 1; block >= 0; --block) {
    const int64_t t0 = block * K;
    const int64_t len = std::min(K, c.L - t0);
    const T* __restrict__ u = c.u + t0;
    // Recompute the block's decays and states from its checkpoint.
    std::memcpy(states, c.checkpoints + block * N, sizeof(T) * N);
    discretise(c.delta + t0, c.bias, c.softplus, len, dts);
    for (int64_t i = 0; i < len; ++i) {
      const T dti = dts[i];
      const T dtu = dti * u[i];
      const T* __restrict__ Bt = c.B + (t0 + i) * N;
      const T* __restrict__ hp = states + i * N;
      T* __restrict__ hn = states + (i + 1) * N;
      T* __restrict__ an = decay + i * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        const T a = fast_exp(dti * A[n]);
        an[n] = a;
        hn[n] = a * hp[n] + dtu * Bt[n];
      }
    }
    // Gradient through the gate: out = y * silu(z).
    const T* __restrict__ dout = c.dout + t0;
    if (c.z == nullptr) {
      std::memcpy(dys, dout, sizeof(T) * len);
    } else {
      const T* __restrict__ z = c.z + t0;
      const T* __restrict__ y_pre = c.y_pre_gate + t0;
      T* __restrict__ dz = c.dz + t0;
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const T s = sigmoid(z[i]);
        dz[i] = dout[i] * y_pre[i] * s * (T(1) + z[i] * (T(1) - s));
        dys[i] = dout[i] * z[i] * s;
      }
    }
    // Reverse recurrence over the block.
    for (int64_t i = len - 1; i >= 0; --i) {
      const int64_t t = t0 + i;
      const T dy = dys[i];
      const T dt = dts[i];
      const T dtu = dt * u[i];
      const T* __restrict__ Bt = c.B + t * N;
      const T* __restrict__ Ct = c.C + t * N;
      T* __restrict__ dBt = c.dB + t * N;
      T* __restrict__ dCt = c.dC + t * N;
      const T* __restrict__ hp = states + i * N;
      const T* __restrict__ hc = states + (i + 1) * N;
      const T* __restrict__ an = decay + i * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        const T gt = g[n] + Ct[n] * dy;  // dL/dh_t
        dCt[n] += dy * hc[n];
        dBt[n] += gt * dtu;
        gB[n] = gt * Bt[n];
        const T w = gt * an[n] * hp[n];  // dL/d(dt * A_n)
        dA[n] += dt * w;
        Aw[n] = A[n] * w;
        g[n] = gt * an[n];
      }
      const T sum_gB = sum_states<T, NS>(gB, N);
      const T sum_Aw = sum_states<T, NS>(Aw, N);
      c.du[t] = dt * sum_gB + c.D * dy;
      ddts[i] = u[i] * sum_gB + sum_Aw;
    }
    // dt -> delta (softplus), and the per-channel sums for D and delta_bias.
    const T* __restrict__ delta = c.delta + t0;
    T* __restrict__ ddelta = c.ddelta + t0;
    T block_dbias = T(0);
    T block_dD = T(0);
    if (c.softplus) {
#pragma omp simd reduction(+ : block_dbias)
      for (int64_t i = 0; i < len; ++i) {
        const T grad = ddts[i] * softplus_grad(delta[i] + c.bias);
        ddelta[i] = grad;
        block_dbias += grad;
      }
    } else {
#pragma omp simd reduction(+ : block_dbias)
      for (int64_t i = 0; i < len; ++i) {
        ddelta[i] = ddts[i];
        block_dbias += ddts[i];
      }
    }
#pragma omp simd reduction(+ : block_dD)
    for (int64_t i = 0; i < len; ++i) block_dD += dys[i] * u[i];
    dbias += block_dbias;
    dD += block_dD;
  }
  std::memcpy(c.dA, dA, sizeof(T) * N);
  *c.dD = static_cast<T>(dD);
  *c.dbias = static_cast<T>(dbias);
}

// Non-template entry points, each compiled once per CPU clone.
SSAMBA_CPU_CLONES void forward_f32_n16(const ForwardChannel<float>& c) {
  forward_channel_body<float, kSpecialisedStateSize>(c);
}
SSAMBA_CPU_CLONES void forward_f32_any(const ForwardChannel<float>& c) {
  forward_channel_body<float, 0>(c);
}
SSAMBA_CPU_CLONES void forward_f64_n16(const ForwardChannel<double>& c) {
  forward_channel_body<double, kSpecialisedStateSize>(c);
}
SSAMBA_CPU_CLONES void forward_f64_any(const ForwardChannel<double>& c) {
  forward_channel_body<double, 0>(c);
}
SSAMBA_CPU_CLONES void backward_f32_n16(const BackwardChannel<float>& c) {
  backward_channel_body<float, kSpecialisedStateSize>(c);
}
SSAMBA_CPU_CLONES void backward_f32_any(const BackwardChannel<float>& c) {
  backward_channel_body<float, 0>(c);
}
SSAMBA_CPU_CLONES void backward_f64_n16(const BackwardChannel<double>& c) {
  backward_channel_body<double, kSpecialisedStateSize>(c);
}
SSAMBA_CPU_CLONES void backward_f64_any(const BackwardChannel<double>& c) {
  backward_channel_body<double, 0>(c);
}

void run_forward(const ForwardChannel<float>& c) {
  c.N == kSpecialisedStateSize ? forward_f32_n16(c) : forward_f32_any(c);
}
void run_forward(const ForwardChannel<double>& c) {
  c.N == kSpecialisedStateSize ? forward_f64_n16(c) : forward_f64_any(c);
}
void run_backward(const BackwardChannel<float>& c) {
  c.N == kSpecialisedStateSize ? backward_f32_n16(c) : backward_f32_any(c);
}
void run_backward(const BackwardChannel<double>& c) {
  c.N == kSpecialisedStateSize ? backward_f64_n16(c) : backward_f64_any(c);
}

int num_threads_for_call() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

template <typename T>
T value_at_or_zero(const std::optional<at::Tensor>& t, int64_t i) {
  return t.has_value() ? t->data_ptr<T>()[i] : T(0);
}

struct Shapes {
  int64_t batch, dim, L, N;
};

Shapes check_inputs(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                    const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                    const std::optional<at::Tensor>& z,
                    const std::optional<at::Tensor>& delta_bias, int64_t interval) {
  TORCH_CHECK(interval > 0, "checkpoint interval must be positive, got ", interval);
  TORCH_CHECK(u.dim() == 3, "u must be (batch, dim, L), got ", u.sizes());
  const Shapes s{u.size(0), u.size(1), u.size(2), A.size(1)};
  auto check = [&](const at::Tensor& t, at::IntArrayRef expected, const char* name) {
    TORCH_CHECK(t.sizes() == expected, name, " must have shape ", expected, ", got ", t.sizes());
    TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(t.scalar_type() == u.scalar_type(), name, " must have dtype ", u.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  };
  check(u, {s.batch, s.dim, s.L}, "u");
  check(delta, {s.batch, s.dim, s.L}, "delta");
  check(A, {s.dim, s.N}, "A");
  check(B, {s.batch, s.L, s.N}, "B (transposed)");
  check(C, {s.batch, s.L, s.N}, "C (transposed)");
  if (D.has_value()) check(*D, {s.dim}, "D");
  if (z.has_value()) check(*z, {s.batch, s.dim, s.L}, "z");
  if (delta_bias.has_value()) check(*delta_bias, {s.dim}, "delta_bias");
  return s;
}

template <typename T>
void forward_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                  const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                  bool delta_softplus, const Shapes& s, int64_t interval, at::Tensor& out,
                  at::Tensor& y_pre_gate, at::Tensor& checkpoints, bool save_for_backward) {
  const int64_t num_blocks = (s.L + interval - 1) / interval;
  const int64_t channels = s.batch * s.dim;
  const int threads = num_threads_for_call();
  const T* z_ptr = data_or_null<T>(z);
  T* y_pre_ptr = y_pre_gate.defined() ? y_pre_gate.data_ptr<T>() : nullptr;
  T* ckpt_ptr = save_for_backward ? checkpoints.data_ptr<T>() : nullptr;
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> work(forward_work_size(s.N, interval));
#pragma omp for schedule(static)
    for (int64_t ch = 0; ch < channels; ++ch) {
      const int64_t b = ch / s.dim;
      const int64_t d = ch % s.dim;
      const int64_t seq = ch * s.L;
      ForwardChannel<T> c;
      c.u = u.data_ptr<T>() + seq;
      c.delta = delta.data_ptr<T>() + seq;
      c.A = A.data_ptr<T>() + d * s.N;
      c.B = B.data_ptr<T>() + b * s.L * s.N;
      c.C = C.data_ptr<T>() + b * s.L * s.N;
      c.z = z_ptr != nullptr ? z_ptr + seq : nullptr;
      c.D = value_at_or_zero<T>(D, d);
      c.bias = value_at_or_zero<T>(delta_bias, d);
      c.softplus = delta_softplus;
      c.L = s.L;
      c.N = s.N;
      c.interval = interval;
      c.out = out.data_ptr<T>() + seq;
      c.y_pre_gate = y_pre_ptr != nullptr ? y_pre_ptr + seq : nullptr;
      c.checkpoints = ckpt_ptr != nullptr ? ckpt_ptr + ch * num_blocks * s.N : nullptr;
      c.work = work.data();
      run_forward(c);
    }
  }
}

// Returns {out, y_pre_gate, checkpoints}. y_pre_gate (the output before the silu(z) gate) and
// checkpoints (batch, dim, ceil(L / interval), N) are empty unless save_for_backward.
std::vector<at::Tensor> selective_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, int64_t interval,
    bool save_for_backward) {
  const Shapes s = check_inputs(u, delta, A, B, C, D, z, delta_bias, interval);
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "fused selective scan supports float32 and float64, got ", u.scalar_type());
  const int64_t num_blocks = (s.L + interval - 1) / interval;
  at::Tensor out = at::empty_like(u);
  at::Tensor y_pre_gate = (save_for_backward && z.has_value()) ? at::empty_like(u) : at::Tensor();
  at::Tensor checkpoints = save_for_backward
                               ? at::empty({s.batch, s.dim, num_blocks, s.N}, u.options())
                               : at::Tensor();
  if (u.scalar_type() == at::kFloat) {
    forward_impl<float>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, s, interval, out,
                        y_pre_gate, checkpoints, save_for_backward);
  } else {
    forward_impl<double>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, s, interval, out,
                         y_pre_gate, checkpoints, save_for_backward);
  }
  return {out, y_pre_gate.defined() ? y_pre_gate : at::empty({0}, u.options()),
          checkpoints.defined() ? checkpoints : at::empty({0}, u.options())};
}

template <typename T>
void backward_impl(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                   const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                   const std::optional<at::Tensor>& z,
                   const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                   const Shapes& s, int64_t interval, const at::Tensor& dout,
                   const at::Tensor& y_pre_gate, const at::Tensor& checkpoints, int64_t groups,
                   int threads, at::Tensor& du, at::Tensor& ddelta, at::Tensor& dz,
                   at::Tensor& dB_part, at::Tensor& dC_part, at::Tensor& dA_part,
                   at::Tensor& dD_part, at::Tensor& dbias_part) {
  const int64_t num_blocks = (s.L + interval - 1) / interval;
  const int64_t tasks = s.batch * groups;
  const T* z_ptr = data_or_null<T>(z);
  const int64_t work_size = backward_work_size(s.N, interval);
#pragma omp parallel num_threads(threads)
  {
    std::vector<T> work(work_size);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / groups;
      const int64_t group = task % groups;
      const int64_t d_begin = group * s.dim / groups;
      const int64_t d_end = (group + 1) * s.dim / groups;
      T* dB_task = dB_part.data_ptr<T>() + (group * s.batch + b) * s.L * s.N;
      T* dC_task = dC_part.data_ptr<T>() + (group * s.batch + b) * s.L * s.N;
      for (int64_t d = d_begin; d < d_end; ++d) {
        const int64_t ch = b * s.dim + d;
        const int64_t seq = ch * s.L;
        BackwardChannel<T> c;
        c.u = u.data_ptr<T>() + seq;
        c.delta = delta.data_ptr<T>() + seq;
        c.A = A.data_ptr<T>() + d * s.N;
        c.B = B.data_ptr<T>() + b * s.L * s.N;
        c.C = C.data_ptr<T>() + b * s.L * s.N;
        c.z = z_ptr != nullptr ? z_ptr + seq : nullptr;
        c.y_pre_gate = z_ptr != nullptr ? y_pre_gate.data_ptr<T>() + seq : nullptr;
        c.dout = dout.data_ptr<T>() + seq;
        c.checkpoints = checkpoints.data_ptr<T>() + ch * num_blocks * s.N;
        c.D = value_at_or_zero<T>(D, d);
        c.bias = value_at_or_zero<T>(delta_bias, d);
        c.softplus = delta_softplus;
        c.L = s.L;
        c.N = s.N;
        c.interval = interval;
        c.du = du.data_ptr<T>() + seq;
        c.ddelta = ddelta.data_ptr<T>() + seq;
        c.dz = z_ptr != nullptr ? dz.data_ptr<T>() + seq : nullptr;
        c.dB = dB_task;
        c.dC = dC_task;
        c.dA = dA_part.data_ptr<T>() + ch * s.N;
        c.dD = dD_part.data_ptr<T>() + ch;
        c.dbias = dbias_part.data_ptr<T>() + ch;
        c.work = work.data();
        run_backward(c);
      }
    }
  }
}

// Returns {du, ddelta, dA, dB, dC, dD, dz, ddelta_bias}; dB and dC are (batch, L, N) like the
// inputs; dD, dz and ddelta_bias are empty when the corresponding input is absent.
std::vector<at::Tensor> selective_scan_backward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, int64_t interval,
    const at::Tensor& dout, const at::Tensor& y_pre_gate, const at::Tensor& checkpoints) {
  const Shapes s = check_inputs(u, delta, A, B, C, D, z, delta_bias, interval);
  const int64_t num_blocks = (s.L + interval - 1) / interval;
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() &&
                  dout.scalar_type() == u.scalar_type(),
              "dout must be a contiguous ", u.scalar_type(), " tensor of shape ", u.sizes());
  TORCH_CHECK(checkpoints.sizes() == at::IntArrayRef({s.batch, s.dim, num_blocks, s.N}),
              "checkpoints have shape ", checkpoints.sizes(), ", expected ",
              at::IntArrayRef({s.batch, s.dim, num_blocks, s.N}));
  TORCH_CHECK(!z.has_value() || y_pre_gate.sizes() == u.sizes(),
              "y_pre_gate must have the shape of u when z is given");
  const int threads = num_threads_for_call();
  // Channels of one batch element are split into `groups` tasks with private dB/dC
  // accumulators; batch * groups is a multiple of the thread count so the load is even.
  const int64_t groups =
      std::max<int64_t>(1, std::min<int64_t>(s.dim, threads / std::gcd<int64_t>(s.batch, threads)));
  auto opts = u.options();
  at::Tensor du = at::empty_like(u);
  at::Tensor ddelta = at::empty_like(u);
  at::Tensor dz = z.has_value() ? at::empty_like(u) : at::empty({0}, opts);
  at::Tensor dB_part = at::zeros({groups, s.batch, s.L, s.N}, opts);
  at::Tensor dC_part = at::zeros({groups, s.batch, s.L, s.N}, opts);
  at::Tensor dA_part = at::empty({s.batch, s.dim, s.N}, opts);
  at::Tensor dD_part = at::empty({s.batch, s.dim}, opts);
  at::Tensor dbias_part = at::empty({s.batch, s.dim}, opts);
  if (u.scalar_type() == at::kFloat) {
    backward_impl<float>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, s, interval, dout,
                         y_pre_gate, checkpoints, groups, threads, du, ddelta, dz, dB_part,
                         dC_part, dA_part, dD_part, dbias_part);
  } else {
    backward_impl<double>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, s, interval, dout,
                          y_pre_gate, checkpoints, groups, threads, du, ddelta, dz, dB_part,
                          dC_part, dA_part, dD_part, dbias_part);
  }
  at::Tensor dB = groups == 1 ? dB_part.select(0, 0) : dB_part.sum(0);
  at::Tensor dC = groups == 1 ? dC_part.select(0, 0) : dC_part.sum(0);
  at::Tensor empty = at::empty({0}, opts);
  return {du,
          ddelta,
          dA_part.sum(0),
          dB,
          dC,
          D.has_value() ? dD_part.sum(0) : empty,
          dz,
          delta_bias.has_value() ? dbias_part.sum(0) : empty};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU selective scan (Mamba-1) with checkpointed recomputing backward";
  m.def("forward", &selective_scan_forward, "selective scan forward", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("interval"),
        py::arg("save_for_backward"));
  m.def("backward", &selective_scan_backward, "selective scan backward", py::arg("u"),
        py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"), py::arg("z"),
        py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("interval"), py::arg("dout"),
        py::arg("y_pre_gate"), py::arg("checkpoints"));
  ssamba::bind_mixer_ops(m);
}
