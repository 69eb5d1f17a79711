/* Decode-step attention for t1's CPU sampler (t1/rollout/fast.py, via t1/kernels/ops.py), built by
 * t1/kernels/build.py with the system C compiler at first use (-O3 -march=native, OpenMP where available) and cached.
 *
 * Why: one decoding step asks, for every (row, head) pair, for a mat-vec against that row's keys and one
 * against its values. As batched matmuls that is a few hundred tiny GEMMs per layer with per-call overhead,
 * and on the CPU the bf16 ones are slower than fp32 — so the cache had to be fp32, twice the bytes. These
 * loops read each key/value row once, widen bf16 to fp32 in registers and accumulate in fp32.
 *
 * Layout: pair p = b * Hq + h reads kv head h / g of row b; element (b, kv_head, t, d) of the K or V cache
 * is at b * sb + kv_head * sh + t * st + d (so cache slices [B, Hkv, T, D] with any strides but a
 * contiguous last dimension). q and out are [pairs, D] contiguous; scores / probs are [pairs, T] contiguous.
 * The caller (kernel.py) checks shapes, dtypes and strides before passing pointers.
 */
#include <stdint.h>

static inline float widen_f32(const float *p) { return *p; }
static inline float widen_bf16(const uint16_t *p) {
  union { uint32_t u; float f; } c;
  c.u = (uint32_t)*p << 16;
  return c.f;
}

#ifndef PF
#define PF 16
#endif
/* Ask for a row PF rows ahead: the rows of one (row, head) pair are contiguous, but without this the
   hardware prefetcher runs into the unused slots past T and the loops wait on memory (in a real decode step
   the cache does not fit in L3). */
#define PREFETCH(ptr, bytes) \
  for (int o_ = 0; o_ < (bytes); o_ += 64) __builtin_prefetch((const char *)(ptr) + o_, 0, 0);
#define PARALLEL _Pragma("omp parallel for schedule(static) num_threads(nt)")

/* scores[p, t] = q[p, :] . K[b, h / g, t, :] */
#define SCORES(ELEM, WIDEN, DD)                                                 \
  PARALLEL                                                                      \
  for (int p = 0; p < pairs; p++) {                                             \
    const int b = p / Hq, h = p % Hq;                                           \
    float qv[DD];                                                               \
    for (int d = 0; d < DD; d++) qv[d] = q[(long)p * DD + d];                   \
    const ELEM *restrict kp = k + b * sb + (h / g) * sh;                        \
    float *restrict sp = s + (long)p * T;                                       \
    for (int t = 0; t < T; t++) {                                               \
      const ELEM *restrict kt = kp + t * st;                                    \
      PREFETCH(kt + PF * st, DD * (int)sizeof(ELEM));                            \
      float acc = 0.f;                                                          \
      for (int d = 0; d < DD; d++) acc += qv[d] * WIDEN(kt + d);                \
      sp[t] = acc;                                                              \
    }                                                                           \
  }

/* out[p, :] = sum_t probs[p, t] V[b, h / g, t, :] */
#define PV(ELEM, WIDEN, DD)                                                     \
  PARALLEL                                                                      \
  for (int p = 0; p < pairs; p++) {                                             \
    const int b = p / Hq, h = p % Hq;                                           \
    const float *restrict pp = probs + (long)p * T;                             \
    const ELEM *restrict vp = v + b * sb + (h / g) * sh;                        \
    float acc[DD];                                                              \
    for (int d = 0; d < DD; d++) acc[d] = 0.f;                                  \
    for (int t = 0; t < T; t++) {                                               \
      const ELEM *restrict vt = vp + t * st;                                    \
      PREFETCH(vt + PF * st, DD * (int)sizeof(ELEM));                            \
      const float w = pp[t];                                                    \
      for (int d = 0; d < DD; d++) acc[d] += w * WIDEN(vt + d);                 \
    }                                                                           \
    for (int d = 0; d < DD; d++) out[(long)p * DD + d] = acc[d];                \
  }

/* Head sizes of common models get loops the compiler fully unrolls and vectorises; others the generic one. */
#define DISPATCH(BODY, ELEM, WIDEN)                                             \
  if (D == 64) { BODY(ELEM, WIDEN, 64) }                                        \
  else if (D == 128) { BODY(ELEM, WIDEN, 128) }                                 \
  else { BODY(ELEM, WIDEN, D) }

#define ARGS int pairs, int Hq, int g, int D, int T, long sb, long sh, long st, int nt

void t1_scores_f32(const float *restrict q, const float *restrict k, float *restrict s, ARGS) {
  DISPATCH(SCORES, float, widen_f32)
}
void t1_scores_bf16(const float *restrict q, const uint16_t *restrict k, float *restrict s, ARGS) {
  DISPATCH(SCORES, uint16_t, widen_bf16)
}
void t1_pv_f32(const float *restrict probs, const float *restrict v, float *restrict out, ARGS) {
  DISPATCH(PV, float, widen_f32)
}
void t1_pv_bf16(const float *restrict probs, const uint16_t *restrict v, float *restrict out, ARGS) {
  DISPATCH(PV, uint16_t, widen_bf16)
}
