// Fused CPU selective scan (Mamba-1 recurrence) in the channel-last layout, vectorised over
// channels, with an exact, memory-light backward. The kernels themselves are in
// scan_kernels.inc, compiled once per instruction set (see below).
//
// Layout (one floating dtype T; channels contiguous, batch and time strides free):
//   u, delta, z : (batch, L, dim)  -- e.g. slices of in_proj's output, as the mixer makes them
//   B, C        : (batch, L, N)    -- e.g. slices of x_proj's output
//   A_t         : (N, dim) contiguous (A transposed, so that channels are innermost)
//   D, bias     : (dim,) contiguous, or absent
//   inference only, instead of delta: dt_low (batch, L, R) (e.g. a slice of x_proj's output)
//   and dt_weight_t (R, dim) contiguous, delta_t = dt_weight_t^T dt_low_t (dt_proj fused in)
// Outputs and gradients are contiguous (batch, L, dim) / (batch, L, N) / (dim, N) tensors.
//
// Per channel d and state n, for the steps s = 0 .. L-1 taken in time order t = s, or
// t = L-1-s with `reverse` (the backward direction of a bidirectional mixer, without flips):
//   dt_t  = softplus(delta_t + bias) or delta_t + bias
//   h_t   = exp(dt_t * A_n) * h_prev + dt_t * B_tn * u_t
//   y_t   = sum_n C_tn * h_tn + D * u_t,   out_t = y_t * silu(z_t) when z is given.
//
// One SIMD vector holds Lanes<T>::kCount adjacent channels (16 float / 8 double = 64 bytes),
// so every operation of the recurrence is a full-width vector operation and the sum over states
// needs no horizontal reduction. A thread takes a (batch, tile of channels) task at a time.
//
// The forward keeps the state only at the start of every block of `interval` steps. The
// backward runs block by block from the end: for each tile of the task it recomputes the
// block's decays and states from the checkpoint (small per-thread buffers) and runs the reverse
// recurrence g_prev = a_t * (g_t + C_t dy_t); dB and dC (sums over channels) are accumulated
// per lane over the task's tiles and reduced across lanes once per block. GCC x86-64 builds
// carry AVX-512, AVX2 and baseline versions of the tile kernels, chosen at first use.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mixer_ops.h"
#include "vector_math.h"

// GCC on x86-64 compiles the kernels three times (AVX-512, AVX2, baseline) and picks one at
// run time; other compilers and architectures get the baseline build only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define SSAMBA_SCAN_X86_DISPATCH 1
#include <immintrin.h>
#else
#define SSAMBA_SCAN_X86_DISPATCH 0
#endif

namespace {

// softplus is linear above this input, as in torch.nn.functional.softplus.
constexpr double kSoftplusThreshold = 20.0;
template <typename T>
constexpr T kLog2e = T(1.442695040888963407359924681001892137);
// State size with a compile-time specialised kernel (others use the generic one).
constexpr int kSpecialisedStateSize = 16;
// States per group of the backward's reverse recurrence (g and dA of a group fit in registers).
constexpr int64_t kRegisterStates = 8;

template <typename T>
struct Lanes;
template <>
struct Lanes<float> {
  static constexpr int kCount = 16;
  typedef float Vec __attribute__((vector_size(64), aligned(64)));
  typedef int32_t Int __attribute__((vector_size(64), aligned(64)));
};
template <>
struct Lanes<double> {
  static constexpr int kCount = 8;
  typedef double Vec __attribute__((vector_size(64), aligned(64)));
  typedef int64_t Int __attribute__((vector_size(64), aligned(64)));
};

template <typename T>
using Vec = typename Lanes<T>::Vec;

template <typename T>
SSAMBA_INLINE Vec<T> splat(T value) {
  return Vec<T>{} + value;
}

// `count` values from `src` (count <= lanes); the remaining lanes are zero.
template <typename T>
SSAMBA_INLINE Vec<T> load(const T* src, int count) {
  Vec<T> v{};
  if (count == Lanes<T>::kCount) {
    std::memcpy(&v, src, sizeof(v));  // one unaligned vector load
  } else {
    std::memcpy(&v, src, sizeof(T) * count);
  }
  return v;
}

template <typename T>
SSAMBA_INLINE void store(T* dst, Vec<T> v, int count) {
  if (count == Lanes<T>::kCount) {
    std::memcpy(dst, &v, sizeof(v));
  } else {
    std::memcpy(dst, &v, sizeof(T) * count);
  }
}

// Zero-initialised scratch vectors, 64-byte aligned. The AVX-512 clones access them with
// aligned vector moves, while alignof of the vector type in code compiled for the baseline ISA
// is smaller, so neither std::vector nor alignof(V) can be relied on.
constexpr size_t kVectorAlignment = 64;

template <typename V>
class VectorBuffer {
 public:
  explicit VectorBuffer(int64_t count) {
    static_assert(sizeof(V) % kVectorAlignment == 0, "vector size must be a multiple of 64");
    const size_t bytes = sizeof(V) * static_cast<size_t>(std::max<int64_t>(count, 1));
    data_ = static_cast<V*>(std::aligned_alloc(kVectorAlignment, bytes));
    TORCH_CHECK(data_ != nullptr, "could not allocate ", bytes, " bytes of scan scratch memory");
    std::memset(static_cast<void*>(data_), 0, bytes);
  }
  ~VectorBuffer() { std::free(data_); }
  VectorBuffer(const VectorBuffer&) = delete;
  VectorBuffer& operator=(const VectorBuffer&) = delete;
  V* data() const { return data_; }

 private:
  V* data_;
};

template <typename T>
SSAMBA_INLINE T lane_sum(const Vec<T>& v) {
  T total = T(0);
  for (int i = 0; i < Lanes<T>::kCount; ++i) total += v[i];
  return total;
}

template <typename V>
using LaneOf = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V>()[0])>>;

// A strided (batch, L, channels) or (batch, L, N) input: row(b, t) points at its first value.
template <typename T>
struct Rows {
  const T* data = nullptr;
  int64_t batch_stride = 0;
  int64_t time_stride = 0;
  SSAMBA_INLINE const T* row(int64_t b, int64_t t) const {
    return data + b * batch_stride + t * time_stride;
  }
};

template <typename T>
struct ScanArgs {
  Rows<T> u, delta, z, B, C;  // z.data is nullptr when there is no gate
  Rows<T> dt_low;             // (batch, L, dt_rank) when dt_weight_t is set (then delta is unused)
  const T* dt_weight_t;       // (dt_rank, dim) or nullptr
  int64_t dt_rank;
  const T* A_t;               // (N, dim)
  const T* D;                 // (dim,) or nullptr
  const T* bias;              // (dim,) or nullptr
  bool softplus;
  bool reverse;
  int64_t L, dim, N, interval, num_blocks, num_tiles;

  SSAMBA_INLINE int64_t time(int64_t step) const { return reverse ? L - 1 - step : step; }
  SSAMBA_INLINE int lanes_of(int64_t tile) const {
    return static_cast<int>(std::min<int64_t>(Lanes<T>::kCount, dim - tile * Lanes<T>::kCount));
  }
};

template <typename T>
struct ForwardOut {
  T* out;           // (batch, L, dim)
  T out_scale;      // the output is scaled by this
  bool accumulate;  // add to what out holds (a second scan direction) instead of overwriting it
  T* y_pre_gate;    // (batch, L, dim) or nullptr (kept only when z is given and grads are needed)
  T* checkpoints;   // (batch, tiles, blocks, N, lanes) or nullptr
};

template <typename T>
struct BackwardOut {
  const T* dout;        // (batch, L, dim) contiguous
  const T* y_pre_gate;  // (batch, L, dim) when z is given
  const T* checkpoints;
  T* du;                // (batch, L, dim)
  T* ddelta;            // (batch, L, dim)
  T* dz;                // (batch, L, dim) or nullptr
  T* dA;                // (batch, dim, N) per-batch partials
  T* dD;                // (batch, dim) partials
  T* dbias;             // (batch, dim) partials
};

// Per-thread buffers of the backward, in vectors.
template <typename T>
struct BackwardWork {
  Vec<T>* decay;    // (K, N)
  Vec<T>* states;   // (K + 1, N): states[0] is the block's checkpoint
  Vec<T>* dts;      // (K,)
  Vec<T>* dys;      // (K,) gradient of the pre-gate output
  Vec<T>* sum_gB;   // (K,) sum over states of dL/dh_t * B_t
  Vec<T>* sum_Aw;   // (K,) sum over states of A * dL/d(dt * A)
  Vec<T>* acc_B;    // (K, N) per-lane partial sums of dB over the task's tiles
  Vec<T>* acc_C;    // (K, N)
  Vec<T>* A;        // (N,) generic N only
  // Arrays are kPad vectors apart so that equal rows of different arrays do not share
  // their address modulo 4 KiB (which makes loads wait on unrelated stores).
  static constexpr int64_t kPad = 3;
  static int64_t size(int64_t K, int64_t N) { return 4 * K * N + N + 4 * K + N + 8 * kPad; }
  BackwardWork(Vec<T>* base, int64_t K, int64_t N)
      : decay(base),
        states(decay + K * N + kPad),
        dts(states + (K + 1) * N + kPad),
        dys(dts + K + kPad),
        sum_gB(dys + K + kPad),
        sum_Aw(sum_gB + K + kPad),
        acc_B(sum_Aw + K + kPad),
        acc_C(acc_B + K * N + kPad),
        A(acc_C + K * N + kPad) {}
};

// State of one tile carried from block to block: g (N), dA (N), dD and dbias sums.
template <typename T>
struct TileCarry {
  Vec<T>* g;
  Vec<T>* dA;
  Vec<T>* dD;
  Vec<T>* dbias;
};

#if SSAMBA_SCAN_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define SSAMBA_SCAN_AVX512 1
namespace isa_x86_64_v4 {
#include "scan_kernels.inc"
}  // namespace isa_x86_64_v4
#undef SSAMBA_SCAN_AVX512
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace isa_x86_64_v3 {
#include "scan_kernels.inc"
}  // namespace isa_x86_64_v3
#pragma GCC pop_options
#endif
namespace isa_baseline {
#include "scan_kernels.inc"
}  // namespace isa_baseline

template <typename T>
using ForwardTileFn = void (*)(const ScanArgs<T>&, const ForwardOut<T>&, int64_t, int64_t,
                               Vec<T>*);
template <typename T>
using BackwardTileBlockFn = void (*)(const ScanArgs<T>&, const BackwardOut<T>&, int64_t, int64_t,
                                     int64_t, const BackwardWork<T>&, const TileCarry<T>&);

// The builds of the kernels, widest instruction set first, and the one in use (the widest the
// CPU supports unless set_scan_isa chose another, e.g. to test every build on one machine).
template <typename T>
struct KernelSet {
  const char* isa;
  ForwardTileFn<T> forward_tile;
  BackwardTileBlockFn<T> backward_tile_block;
};

template <typename T>
const std::vector<KernelSet<T>>& kernel_sets() {
  static const std::vector<KernelSet<T>> sets = [] {
    std::vector<KernelSet<T>> supported;
#if SSAMBA_SCAN_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) {
      supported.push_back({"x86-64-v4", isa_x86_64_v4::forward_tile,
                           isa_x86_64_v4::backward_tile_block});
    }
    if (__builtin_cpu_supports("x86-64-v3")) {
      supported.push_back({"x86-64-v3", isa_x86_64_v3::forward_tile,
                           isa_x86_64_v3::backward_tile_block});
    }
#endif
    supported.push_back({"baseline", isa_baseline::forward_tile, isa_baseline::backward_tile_block});
    return supported;
  }();
  return sets;
}

std::atomic<size_t> selected_isa{0};  // index into kernel_sets()

template <typename T>
const KernelSet<T>& kernels() {
  return kernel_sets<T>()[selected_isa.load(std::memory_order_relaxed)];
}

std::vector<std::string> scan_isas() {
  std::vector<std::string> names;
  for (const auto& set : kernel_sets<float>()) names.emplace_back(set.isa);
  return names;
}

std::string scan_isa() { return kernels<float>().isa; }

void set_scan_isa(const std::string& name) {
  const std::vector<std::string> names = scan_isas();
  const auto found = std::find(names.begin(), names.end(), name);
  TORCH_CHECK(found != names.end(), "scan kernels for '", name,
              "' are not available on this CPU; available: ", c10::Join(", ", names));
  selected_isa.store(static_cast<size_t>(found - names.begin()));
}

int num_threads_for_call() { return at::in_parallel_region() ? 1 : at::get_num_threads(); }

template <typename T>
Rows<T> rows_of(const at::Tensor& t) {
  return Rows<T>{t.data_ptr<T>(), t.stride(0), t.stride(1)};
}

template <typename T>
const T* data_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// Validates shapes, dtypes and layouts; returns the kernel arguments.
template <typename T>
ScanArgs<T> make_args(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A_t,
                      const at::Tensor& B, const at::Tensor& C,
                      const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                      const std::optional<at::Tensor>& delta_bias, bool delta_softplus,
                      bool reverse, int64_t interval,
                      const std::optional<at::Tensor>& dt_weight_t = std::nullopt) {
  TORCH_CHECK(interval > 0, "checkpoint interval must be positive, got ", interval);
  TORCH_CHECK(u.dim() == 3 && u.size(1) > 0, "u must be (batch, L >= 1, dim), got ", u.sizes());
  TORCH_CHECK(A_t.dim() == 2 && A_t.size(1) == u.size(2) && A_t.size(0) > 0,
              "A_t must be (N, dim=", u.size(2), "), got ", A_t.sizes());
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), N = A_t.size(0);
  auto check = [&](const at::Tensor& t, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == u.scalar_type(), name, " must have dtype ", u.scalar_type(),
                ", got ", t.scalar_type());
    TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
    TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, name,
                " must be contiguous in its last dimension, got strides ", t.strides());
  };
  check(u, {batch, L, dim}, "u");
  const int64_t dt_rank = dt_weight_t.has_value() ? dt_weight_t->size(0) : 0;
  if (dt_weight_t.has_value()) {
    TORCH_CHECK(dt_rank > 0, "dt_weight_t must be (dt_rank >= 1, dim), got ", dt_weight_t->sizes());
    check(*dt_weight_t, {dt_rank, dim}, "dt_weight_t");
    TORCH_CHECK(dt_weight_t->is_contiguous(), "dt_weight_t must be contiguous");
    check(delta, {batch, L, dt_rank}, "dt_low");
  } else {
    check(delta, {batch, L, dim}, "delta");
  }
  check(A_t, {N, dim}, "A_t");
  TORCH_CHECK(A_t.is_contiguous(), "A_t must be contiguous");
  check(B, {batch, L, N}, "B");
  check(C, {batch, L, N}, "C");
  if (z.has_value()) check(*z, {batch, L, dim}, "z");
  for (const auto& [t, name] : {std::pair{&D, "D"}, std::pair{&delta_bias, "delta_bias"}}) {
    if (!t->has_value()) continue;
    check(**t, {dim}, name);
    TORCH_CHECK((*t)->is_contiguous(), name, " must be contiguous");
  }
  ScanArgs<T> a;
  a.u = rows_of<T>(u);
  a.delta = dt_weight_t.has_value() ? Rows<T>{} : rows_of<T>(delta);
  a.dt_low = dt_weight_t.has_value() ? rows_of<T>(delta) : Rows<T>{};
  a.dt_weight_t = data_or_null<T>(dt_weight_t);
  a.dt_rank = dt_rank;
  a.z = z.has_value() ? rows_of<T>(*z) : Rows<T>{};
  a.B = rows_of<T>(B);
  a.C = rows_of<T>(C);
  a.A_t = A_t.data_ptr<T>();
  a.D = data_or_null<T>(D);
  a.bias = data_or_null<T>(delta_bias);
  a.softplus = delta_softplus;
  a.reverse = reverse;
  a.L = L;
  a.dim = dim;
  a.N = N;
  a.interval = interval;
  a.num_blocks = (L + interval - 1) / interval;
  a.num_tiles = (dim + Lanes<T>::kCount - 1) / Lanes<T>::kCount;
  return a;
}

// Runs the directions one after the other on each (batch, tile) task, so that a later
// direction adds to the output tile an earlier one has just written (still in cache).
template <typename T>
void forward_impl(const std::vector<ScanArgs<T>>& directions, int64_t batch,
                  const std::vector<ForwardOut<T>>& outs) {
  const ScanArgs<T>& first = directions.front();
  const int64_t tasks = batch * first.num_tiles;
#pragma omp parallel num_threads(num_threads_for_call())
  {
    const VectorBuffer<Vec<T>> work(2 * first.N);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      for (size_t d = 0; d < directions.size(); ++d) {
        kernels<T>().forward_tile(directions[d], outs[d], task / first.num_tiles,
                                  task % first.num_tiles, work.data());
      }
    }
  }
}

// Returns {out, y_pre_gate, checkpoints}; the last two are empty unless save_for_backward
// (y_pre_gate also when there is no z). checkpoints is an opaque (batch, tiles, blocks, N,
// lanes) tensor for the backward.
std::vector<at::Tensor> selective_scan_forward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A_t, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, bool reverse,
    int64_t interval, bool save_for_backward) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "fused selective scan supports float32 and float64, got ", u.scalar_type());
  at::Tensor out = at::empty({u.size(0), u.size(1), u.size(2)}, u.options());
  at::Tensor y_pre_gate, checkpoints;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "fused_selective_scan_forward", [&] {
    using T = scalar_t;
    const ScanArgs<T> a =
        make_args<T>(u, delta, A_t, B, C, D, z, delta_bias, delta_softplus, reverse, interval);
    const int64_t batch = u.size(0);
    if (save_for_backward) {
      checkpoints = at::empty({batch, a.num_tiles, a.num_blocks, a.N, Lanes<T>::kCount},
                              u.options());
      if (z.has_value()) y_pre_gate = at::empty_like(out);
    }
    ForwardOut<T> o;
    o.out = out.data_ptr<T>();
    o.out_scale = T(1);
    o.accumulate = false;
    o.y_pre_gate = y_pre_gate.defined() ? y_pre_gate.data_ptr<T>() : nullptr;
    o.checkpoints = checkpoints.defined() ? checkpoints.data_ptr<T>() : nullptr;
    forward_impl<T>({a}, batch, {o});
  });
  at::Tensor empty = at::empty({0}, u.options());
  return {out, y_pre_gate.defined() ? y_pre_gate : empty,
          checkpoints.defined() ? checkpoints : empty};
}

// Inference forward of one or more scan directions that share the gate z and sum into one
// output, out = out_scale * sum_d out_d, with dt_proj fused in (delta_d from dt_low[d] and
// dt_weight_t[d]) and nothing kept for a backward. Each list holds one entry per direction.
// `out`, when given, receives the result (contiguous (batch, L, dim)); it may be u[0] itself
// (each step reads u before writing out) as long as no later direction reads that tensor.
at::Tensor selective_scan_inference(
    const std::vector<at::Tensor>& u, const std::vector<at::Tensor>& dt_low,
    const std::vector<at::Tensor>& dt_weight_t, const std::vector<at::Tensor>& A_t,
    const std::vector<at::Tensor>& B, const std::vector<at::Tensor>& C,
    const std::vector<at::Tensor>& D, const std::vector<at::Tensor>& delta_bias,
    const std::vector<bool>& reverse, const std::optional<at::Tensor>& z, bool delta_softplus,
    double out_scale, const std::optional<at::Tensor>& out_buffer) {
  const size_t count = u.size();
  TORCH_CHECK(count > 0, "at least one scan direction is needed");
  for (const size_t size : {dt_low.size(), dt_weight_t.size(), A_t.size(), B.size(), C.size(),
                            D.size(), delta_bias.size(), reverse.size()}) {
    TORCH_CHECK(size == count, "every argument list needs one entry per direction (", count,
                "), got ", size);
  }
  TORCH_CHECK(u[0].scalar_type() == at::kFloat || u[0].scalar_type() == at::kDouble,
              "fused selective scan supports float32 and float64, got ", u[0].scalar_type());
  for (size_t d = 1; d < count; ++d) {
    TORCH_CHECK(u[d].sizes() == u[0].sizes(), "u of every direction must have shape ",
                u[0].sizes(), ", got ", u[d].sizes());
    TORCH_CHECK(A_t[d].sizes() == A_t[0].sizes(), "A_t of every direction must have shape ",
                A_t[0].sizes(), ", got ", A_t[d].sizes());
  }
  at::Tensor out;
  if (out_buffer.has_value()) {
    out = *out_buffer;
    TORCH_CHECK(out.sizes() == u[0].sizes() && out.scalar_type() == u[0].scalar_type() &&
                    out.device().is_cpu() && out.is_contiguous(),
                "out must be a contiguous CPU tensor of u's shape ", u[0].sizes(), " and dtype");
    for (size_t d = 1; d < count; ++d) {
      TORCH_CHECK(!out.is_alias_of(u[d]), "out may share memory with u of the first direction only");
    }
  } else {
    out = at::empty({u[0].size(0), u[0].size(1), u[0].size(2)}, u[0].options());
  }
  AT_DISPATCH_FLOATING_TYPES(u[0].scalar_type(), "fused_selective_scan_inference", [&] {
    using T = scalar_t;
    std::vector<ScanArgs<T>> directions;
    std::vector<ForwardOut<T>> outs;
    for (size_t d = 0; d < count; ++d) {
      directions.push_back(make_args<T>(u[d], dt_low[d], A_t[d], B[d], C[d], D[d], z,
                                        delta_bias[d], delta_softplus, reverse[d], 1,
                                        dt_weight_t[d]));
      outs.push_back(ForwardOut<T>{out.data_ptr<T>(), T(out_scale), d > 0, nullptr, nullptr});
    }
    forward_impl<T>(directions, u[0].size(0), outs);
  });
  return out;
}

// Per-batch partial results of the backward that are reduced over the batch afterwards.
template <typename T>
struct BackwardPartials {
  T* dB;     // (groups, batch, L, N)
  T* dC;     // (groups, batch, L, N)
  T* dA;     // (batch, dim, N)
  T* dD;     // (batch, dim)
  T* dbias;  // (batch, dim)
};

template <typename T>
void backward_impl(const ScanArgs<T>& a, int64_t batch, int64_t groups, int threads,
                   const BackwardOut<T>& o, const BackwardPartials<T>& p) {
  using V = Vec<T>;
  constexpr int W = Lanes<T>::kCount;
  const int64_t K = a.interval, L = a.L, N = a.N;
  const int64_t tasks = batch * groups;
#pragma omp parallel num_threads(threads)
  {
    const VectorBuffer<V> buffer(BackwardWork<T>::size(K, N));
    const BackwardWork<T> w(buffer.data(), K, N);
    const int64_t max_tiles = (a.num_tiles + groups - 1) / groups;
    const int64_t carry_size = max_tiles * (2 * N + 2);
    const VectorBuffer<V> carry_buffer(carry_size);
    auto carry_of = [&](int64_t j) {
      V* base = carry_buffer.data() + j * (2 * N + 2);
      return TileCarry<T>{base, base + N, base + 2 * N, base + 2 * N + 1};
    };
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t b = task / groups;
      const int64_t group = task % groups;
      const int64_t tile_begin = group * a.num_tiles / groups;
      const int64_t task_tiles = (group + 1) * a.num_tiles / groups - tile_begin;
      std::fill(carry_buffer.data(), carry_buffer.data() + carry_size, V{});
      T* dB_task = p.dB + (group * batch + b) * L * N;
      T* dC_task = p.dC + (group * batch + b) * L * N;
      for (int64_t block = a.num_blocks - 1; block >= 0; --block) {
        const int64_t s0 = block * K;
        const int64_t len = std::min(K, L - s0);
        std::fill(w.acc_B, w.acc_B + len * N, V{});
        std::fill(w.acc_C, w.acc_C + len * N, V{});
        for (int64_t j = 0; j < task_tiles; ++j) {
          kernels<T>().backward_tile_block(a, o, b, tile_begin + j, block, w, carry_of(j));
        }
        for (int64_t i = 0; i < len; ++i) {
          const int64_t t = a.time(s0 + i);
          for (int64_t n = 0; n < N; ++n) {
            dB_task[t * N + n] = lane_sum<T>(w.acc_B[i * N + n]);
            dC_task[t * N + n] = lane_sum<T>(w.acc_C[i * N + n]);
          }
        }
      }
      for (int64_t j = 0; j < task_tiles; ++j) {
        const TileCarry<T> c = carry_of(j);
        const int64_t d0 = (tile_begin + j) * W;
        const int count = a.lanes_of(tile_begin + j);
        for (int lane = 0; lane < count; ++lane) {
          const int64_t d = b * a.dim + d0 + lane;
          for (int64_t n = 0; n < N; ++n) p.dA[d * N + n] = c.dA[n][lane];
          p.dD[d] = (*c.dD)[lane];
          p.dbias[d] = (*c.dbias)[lane];
        }
      }
    }
  }
}

// Returns {du, ddelta, dA (dim, N), dB, dC (batch, L, N), dD, dz, ddelta_bias}; dD, dz and
// ddelta_bias are empty when the corresponding input is absent.
std::vector<at::Tensor> selective_scan_backward(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A_t, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus, bool reverse,
    int64_t interval, const at::Tensor& dout, const at::Tensor& y_pre_gate,
    const at::Tensor& checkpoints) {
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "fused selective scan supports float32 and float64, got ", u.scalar_type());
  const int64_t batch = u.size(0), L = u.size(1), dim = u.size(2), N = A_t.size(0);
  TORCH_CHECK(dout.sizes() == u.sizes() && dout.is_contiguous() &&
                  dout.scalar_type() == u.scalar_type(),
              "dout must be a contiguous ", u.scalar_type(), " tensor of shape ", u.sizes());
  TORCH_CHECK(!z.has_value() || (y_pre_gate.sizes() == u.sizes() && y_pre_gate.is_contiguous()),
              "y_pre_gate must be a contiguous tensor of the shape of u when z is given");
  const int threads = num_threads_for_call();
  const int64_t lanes = u.scalar_type() == at::kFloat ? Lanes<float>::kCount
                                                      : Lanes<double>::kCount;
  const int64_t num_tiles = (dim + lanes - 1) / lanes;
  // The tiles of one batch element are split into `groups` tasks with private dB/dC partials;
  // batch * groups is a multiple of the thread count where possible, so the load is even.
  const int64_t groups = std::max<int64_t>(
      1, std::min<int64_t>(num_tiles, threads / std::gcd<int64_t>(batch, threads)));
  auto opts = u.options();
  at::Tensor du = at::empty({batch, L, dim}, opts);
  at::Tensor ddelta = at::empty({batch, L, dim}, opts);
  at::Tensor dz = z.has_value() ? at::empty({batch, L, dim}, opts) : at::empty({0}, opts);
  at::Tensor dB_part = at::empty({groups, batch, L, N}, opts);
  at::Tensor dC_part = at::empty({groups, batch, L, N}, opts);
  at::Tensor dA_part = at::empty({batch, dim, N}, opts);
  at::Tensor dD_part = at::empty({batch, dim}, opts);
  at::Tensor dbias_part = at::empty({batch, dim}, opts);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "fused_selective_scan_backward", [&] {
    using T = scalar_t;
    const ScanArgs<T> a =
        make_args<T>(u, delta, A_t, B, C, D, z, delta_bias, delta_softplus, reverse, interval);
    const std::vector<int64_t> expected{batch, a.num_tiles, a.num_blocks, N, Lanes<T>::kCount};
    TORCH_CHECK(checkpoints.sizes() == at::IntArrayRef(expected), "checkpoints have shape ", checkpoints.sizes(),
                ", expected ", expected);
    BackwardOut<T> o;
    o.dout = dout.data_ptr<T>();
    o.y_pre_gate = z.has_value() ? y_pre_gate.data_ptr<T>() : nullptr;
    o.checkpoints = checkpoints.data_ptr<T>();
    o.du = du.data_ptr<T>();
    o.ddelta = ddelta.data_ptr<T>();
    o.dz = z.has_value() ? dz.data_ptr<T>() : nullptr;
    const BackwardPartials<T> p{dB_part.data_ptr<T>(), dC_part.data_ptr<T>(),
                                dA_part.data_ptr<T>(), dD_part.data_ptr<T>(),
                                dbias_part.data_ptr<T>()};
    backward_impl(a, batch, groups, threads, o, p);
  });
  at::Tensor empty = at::empty({0}, opts);
  return {du,
          ddelta,
          dA_part.sum(0),
          groups == 1 ? dB_part.select(0, 0) : dB_part.sum(0),
          groups == 1 ? dC_part.select(0, 0) : dC_part.sum(0),
          D.has_value() ? dD_part.sum(0) : empty,
          dz,
          delta_bias.has_value() ? dbias_part.sum(0) : empty};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused CPU selective scan (Mamba-1, channel-last) and the mixer ops around it";
  m.def("forward", &selective_scan_forward, "selective scan forward (channel-last)",
        py::arg("u"), py::arg("delta"), py::arg("A_t"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("reverse"),
        py::arg("interval"), py::arg("save_for_backward"));
  m.def("inference", &selective_scan_inference,
        "selective scan forward of summed directions for inference (channel-last, dt_proj fused)",
        py::arg("u"), py::arg("dt_low"), py::arg("dt_weight_t"), py::arg("A_t"), py::arg("B"),
        py::arg("C"), py::arg("D"), py::arg("delta_bias"), py::arg("reverse"), py::arg("z"),
        py::arg("delta_softplus"), py::arg("out_scale"), py::arg("out"));
  m.def("backward", &selective_scan_backward, "selective scan backward (channel-last)",
        py::arg("u"), py::arg("delta"), py::arg("A_t"), py::arg("B"), py::arg("C"), py::arg("D"),
        py::arg("z"), py::arg("delta_bias"), py::arg("delta_softplus"), py::arg("reverse"),
        py::arg("interval"), py::arg("dout"), py::arg("y_pre_gate"), py::arg("checkpoints"));
  m.def("scan_isas", &scan_isas, "instruction sets of the scan kernels usable here, widest first");
  m.def("scan_isa", &scan_isa, "instruction set of the scan kernels in use");
  m.def("set_scan_isa", &set_scan_isa, "use the scan kernels of this instruction set",
        py::arg("name"));
  ssamba::bind_mixer_ops(m);
}
