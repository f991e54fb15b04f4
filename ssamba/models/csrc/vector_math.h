// Shared helpers of the fused CPU kernels: CPU clone attribute, inlining, and exp / sigmoid that
// auto-vectorise without -ffast-math.
#pragma once

#include <cmath>
#include <cstdint>

// Defining SSAMBA_CPU_CLONES on the command line (e.g. empty) overrides the clone list.
#ifndef SSAMBA_CPU_CLONES
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 14) || (!defined(__clang__) && __GNUC__ >= 12))
#define SSAMBA_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SSAMBA_CPU_CLONES
#endif
#endif

#define SSAMBA_INLINE inline __attribute__((always_inline))

namespace ssamba {

// exp: float uses a branch-free approximation that vectorises without -ffast-math (max
// relative error 1e-7 over the whole float range); double uses std::exp for full precision.

SSAMBA_INLINE float float_from_bits(int32_t bits) { return __builtin_bit_cast(float, bits); }

SSAMBA_INLINE float fast_exp(float x) {
  // exp(x) = 2^k * exp(r) with k = round(x / ln 2) and |r| <= ln(2) / 2 (Cody-Waite split of
  // ln 2: k * kLn2Hi is exact for |k| <= 127).
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Keeps 2^k a normal float: below it the result is ~1e-38 instead of 0, above ~2e38.
  constexpr float kMinInput = -87.33f;
  constexpr float kMaxInput = 88.0f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float xc = x > kMinInput ? x : kMinInput;   // written so that they map to max/min
  xc = xc < kMaxInput ? xc : kMaxInput;
  const float k = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  float r = xc - k * kLn2Hi;
  r = r - k * kLn2Lo;
  // Taylor polynomial of degree 7 (truncation error < 6e-9 relative on |r| <= 0.347)
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t scale_bits = (static_cast<int32_t>(k) + 127) << 23;
  const float result = p * float_from_bits(scale_bits);
  return x != x ? x : result;  // propagate NaN (the clamps above would hide it)
}

SSAMBA_INLINE double fast_exp(double x) { return std::exp(x); }

SSAMBA_INLINE float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
SSAMBA_INLINE double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace ssamba
