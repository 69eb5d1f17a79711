/* Helpers shared by t1's C kernels: bf16 <-> fp32 and a vectorisable exp. Header-only (static inline). */
#ifndef T1_COMMON_H
#define T1_COMMON_H
#include <math.h>
#include <stdint.h>

static inline float bf16_to_f32(uint16_t x) {
  union { uint32_t u; float f; } c;
  c.u = (uint32_t)x << 16;
  return c.f;
}

static inline uint16_t f32_to_bf16(float f) {
  union { uint32_t u; float f; } c;
  c.f = f;
  uint32_t u = c.u;
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest, ties to even */
  return (uint16_t)(u >> 16);
}

/* exp(x) with x clamped to [-87, 88]: 2^n * p(r), |r| <= ln2/2, a degree-6 Taylor polynomial (relative error
   ~1e-7, far below bf16's 4e-3). Written so the compiler vectorises it: libm's expf does not vectorise
   without -ffast-math, which t1 avoids (it can switch the whole process to flush-to-zero). NaN passes. */
static inline float exp_clamped(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  float n = floorf(x * 1.44269504f + 0.5f);
  float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f; /* ln2 split in two: exact n·ln2_hi */
  float p = 1.f / 720.f;
  p = p * r + 1.f / 120.f;
  p = p * r + 1.f / 24.f;
  p = p * r + 1.f / 6.f;
  p = p * r + 0.5f;
  p = p * r + 1.f;
  p = p * r + 1.f;
  union { uint32_t u; float f; } c;
  c.u = (uint32_t)((int32_t)n + 127) << 23;
  return p * c.f;
}

/* exp(x) for softmax arguments x <= 0: exactly 0 below -87 (where exp underflows fp32's normal range anyway),
   so masked (-inf) scores get no weight at all. NaN passes. */
static inline float exp_softmax(float x) {
  const float e = exp_clamped(x);
  return x < -87.f ? 0.f : e;
}

#define PARALLEL _Pragma("omp parallel for schedule(static) num_threads(nt)")

#endif
