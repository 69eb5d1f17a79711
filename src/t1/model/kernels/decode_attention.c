/* Decode-step attention for t1's CPU sampler (t1/model/decode.py, via t1/model/kernels/ops.py), built by
 * t1/model/kernels/build.py with the system C compiler at first use (-O3 -march=native, OpenMP where available) and cached.
 *
 * Why: one decoding step asks, for every (row, head) pair, for a mat-vec against that row's keys and one
 * against its values. As batched matmuls that is a few hundred tiny GEMMs per layer with per-call overhead.
 * t1_scores_f32 / t1_pv_f32 read each key/value row of an fp32 cache once (fp32 models); for bf16 models
 * t1_decode_block_bf16 below does the whole attention block over a bf16 cache, widening in registers.
 *
 * Layout: pair p = b * Hq + h reads kv head h / g of row b; element (b, kv_head, t, d) of the K or V cache
 * is at b * sb + kv_head * sh + t * st + d (so cache slices [B, Hkv, T, D] with any strides but a
 * contiguous last dimension). q and out are [pairs, D] contiguous; scores / probs are [pairs, T] contiguous.
 * The caller (ops.py) checks shapes, dtypes and strides before passing pointers.
 */
#include "common.h"

#ifndef PF
#define PF 16
#endif
/* Ask for a row PF rows ahead: the rows of one (row, head) pair are contiguous, but without this the
   hardware prefetcher runs into the unused slots past T and the loops wait on memory (in a real decode step
   the cache does not fit in L3). */
#define PREFETCH(ptr, bytes) \
  for (int o_ = 0; o_ < (bytes); o_ += 64) __builtin_prefetch((const char *)(ptr) + o_, 0, 0);

/* scores[p, t] = q[p, :] . K[b, h / g, t, :] */
#define SCORES(DD)                                                              \
  PARALLEL                                                                      \
  for (int p = 0; p < pairs; p++) {                                             \
    const int b = p / Hq, h = p % Hq;                                           \
    float qv[DD];                                                               \
    for (int d = 0; d < DD; d++) qv[d] = q[(long)p * DD + d];                   \
    const float *restrict kp = k + b * sb + (h / g) * sh;                       \
    float *restrict sp = s + (long)p * T;                                       \
    for (int t = 0; t < T; t++) {                                               \
      const float *restrict kt = kp + t * st;                                   \
      PREFETCH(kt + PF * st, DD * (int)sizeof(float));                          \
      float acc = 0.f;                                                          \
      for (int d = 0; d < DD; d++) acc += qv[d] * kt[d];                        \
      sp[t] = acc;                                                              \
    }                                                                           \
  }

/* out[p, :] = sum_t probs[p, t] V[b, h / g, t, :] */
#define PV(DD)                                                                  \
  PARALLEL                                                                      \
  for (int p = 0; p < pairs; p++) {                                             \
    const int b = p / Hq, h = p % Hq;                                           \
    const float *restrict pp = probs + (long)p * T;                             \
    const float *restrict vp = v + b * sb + (h / g) * sh;                       \
    float acc[DD];                                                              \
    for (int d = 0; d < DD; d++) acc[d] = 0.f;                                  \
    for (int t = 0; t < T; t++) {                                               \
      const float *restrict vt = vp + t * st;                                   \
      PREFETCH(vt + PF * st, DD * (int)sizeof(float));                          \
      const float w = pp[t];                                                    \
      for (int d = 0; d < DD; d++) acc[d] += w * vt[d];                         \
    }                                                                           \
    for (int d = 0; d < DD; d++) out[(long)p * DD + d] = acc[d];                \
  }

/* Head sizes of common models get loops the compiler fully unrolls and vectorises; others the generic one. */
#define DISPATCH(BODY)                                                          \
  if (D == 64) { BODY(64) }                                                     \
  else if (D == 128) { BODY(128) }                                              \
  else { BODY(D) }

#define ARGS int pairs, int Hq, int g, int D, int T, long sb, long sh, long st, int nt

void t1_scores_f32(const float *restrict q, const float *restrict k, float *restrict s, ARGS) {
  DISPATCH(SCORES)
}
void t1_pv_f32(const float *restrict probs, const float *restrict v, float *restrict out, ARGS) {
  DISPATCH(PV)
}

/* The whole attention block of one decoding step for bf16 models, in one call (t1_decode_block_bf16): what
 * PyTorch ops would do as an up-cast, RoPE (complex multiply), two strided cache writes, the two kernels above
 * with a softmax and a bias add between them, and a down-cast — about fifteen ops per layer and step, each
 * costing more in dispatch than in arithmetic at decode sizes.
 *
 *   qkv  [B, (Hq + 2 Hkv) D] bf16 contiguous: the fused q/k/v projection of the new token (q pre-scaled);
 *   rot  [B, D/2] (cos, sin) float pairs contiguous: the rotation of each row's new position;
 *   kc, vc: the K and V caches as above (bf16); the new token's rotated k and its v are written at slot t0,
 *        then every pair attends over slots 0..t0;
 *   bias [B, t0 + 1] additive (0 / -inf, row stride ldb) or NULL;
 *   out  [B, Hq D] bf16 contiguous; scratch [B Hq, t0 + 1] floats.
 * q stays fp32 after RoPE (as the PyTorch path keeps it); the cached k is rounded to bf16 as the cache is. */
#define BLOCK(DD)                                                                                              \
  _Pragma("omp parallel num_threads(nt)")                                                                      \
  {                                                                                                            \
    _Pragma("omp for schedule(static)")                                                                        \
    for (int b = 0; b < B; b++) {                                                                              \
      const uint16_t *restrict kn = qkv + (long)b * W + (long)Hq * DD, *restrict vn = kn + (long)Hkv * DD;     \
      const float *restrict cs = rot + (long)b * DD;                                                           \
      for (int j = 0; j < Hkv; j++) {                                                                          \
        uint16_t *restrict kd = kc + b * sb + j * sh + t0 * st, *restrict vd = vc + b * sb + j * sh + t0 * st; \
        for (int i = 0; i < DD / 2; i++) {                                                                     \
          const float x = bf16_to_f32(kn[j * DD + 2 * i]), y = bf16_to_f32(kn[j * DD + 2 * i + 1]);            \
          kd[2 * i] = f32_to_bf16(x * cs[2 * i] - y * cs[2 * i + 1]);                                          \
          kd[2 * i + 1] = f32_to_bf16(x * cs[2 * i + 1] + y * cs[2 * i]);                                      \
        }                                                                                                      \
        for (int d = 0; d < DD; d++) vd[d] = vn[j * DD + d];                                                   \
      }                                                                                                        \
    }                                                                                                          \
    _Pragma("omp for schedule(static)")                                                                        \
    for (int p = 0; p < B * Hq; p++) {                                                                         \
      const int b = p / Hq, h = p % Hq;                                                                        \
      const uint16_t *restrict qn = qkv + (long)b * W + (long)h * DD;                                          \
      const float *restrict cs = rot + (long)b * DD;                                                           \
      float qv[DD];                                                                                            \
      for (int i = 0; i < DD / 2; i++) {                                                                       \
        const float x = bf16_to_f32(qn[2 * i]), y = bf16_to_f32(qn[2 * i + 1]);                                \
        qv[2 * i] = x * cs[2 * i] - y * cs[2 * i + 1];                                                         \
        qv[2 * i + 1] = x * cs[2 * i + 1] + y * cs[2 * i];                                                     \
      }                                                                                                        \
      const uint16_t *restrict kp = kc + b * sb + (h / g) * sh, *restrict vp = vc + b * sb + (h / g) * sh;     \
      const float *restrict bp = bias ? bias + b * ldb : 0;                                                    \
      float *restrict sp = scratch + (long)p * T;                                                              \
      float m = -INFINITY;                                                                                     \
      for (int t = 0; t < T; t++) {                                                                            \
        const uint16_t *restrict kt = kp + t * st;                                                             \
        PREFETCH(kt + PF * st, DD * 2);                                                                        \
        float acc = 0.f;                                                                                       \
        for (int d = 0; d < DD; d++) acc += qv[d] * bf16_to_f32(kt[d]);                                        \
        if (bp) acc += bp[t];                                                                                  \
        sp[t] = acc;                                                                                           \
        m = acc > m ? acc : m;                                                                                 \
      }                                                                                                        \
      if (m == -INFINITY) m = 0.f; /* every slot masked: all weights 0, output 0 (no NaN) */                   \
      float sum = 0.f;                                                                                         \
      for (int t = 0; t < T; t++) {                                                                            \
        const float e = exp_softmax(sp[t] - m);                                                                \
        sp[t] = e;                                                                                             \
        sum += e;                                                                                              \
      }                                                                                                        \
      float acc[DD];                                                                                           \
      for (int d = 0; d < DD; d++) acc[d] = 0.f;                                                               \
      for (int t = 0; t < T; t++) {                                                                            \
        const uint16_t *restrict vt = vp + t * st;                                                             \
        PREFETCH(vt + PF * st, DD * 2);                                                                        \
        const float w = sp[t];                                                                                 \
        for (int d = 0; d < DD; d++) acc[d] += w * bf16_to_f32(vt[d]);                                         \
      }                                                                                                        \
      const float inv = sum > 0.f ? 1.f / sum : 0.f;                                                           \
      for (int d = 0; d < DD; d++) out[(long)p * DD + d] = f32_to_bf16(acc[d] * inv);                          \
    }                                                                                                          \
  }

void t1_decode_block_bf16(const uint16_t *restrict qkv, const float *restrict rot, uint16_t *restrict kc,
                          uint16_t *restrict vc, const float *restrict bias, long ldb, uint16_t *restrict out,
                          float *restrict scratch, int B, int Hq, int Hkv, int D, int t0, long sb, long sh, long st,
                          int nt) {
  const int g = Hq / Hkv, T = t0 + 1;
  const long W = (long)(Hq + 2 * Hkv) * D;
  if (D == 64) { BLOCK(64) }
  else if (D == 128) { BLOCK(128) }
  else { BLOCK(D) }
}
