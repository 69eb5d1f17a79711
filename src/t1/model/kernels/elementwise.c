/* Fused element-wise passes for t1's bf16 training passes and sampler on CPUs (t1/model/forward.py via
 * t1/model/kernels/ops.py), built with the decode-attention kernel (see build.py).
 *
 * Why: on a CPU, PyTorch runs an RMSNorm's backward as about ten passes (its forward as an up-cast, the fused
 * norm and a down-cast), SwiGLU as silu and multiply (backward: silu_backward, two multiplies and a
 * concatenation), each a full pass over [tokens, ffn] activations, and RoPE as an up-cast, a complex multiply
 * and a down-cast. These loops do each in one pass: read, compute in fp32, round to bf16 once
 * (round-to-nearest-even, as PyTorch does; NaN stays NaN).
 *
 * Layouts (the caller in ops.py checks shapes, dtypes and strides):
 *   swiglu: gu [n, 2f] with row stride ld: gate in columns 0..f-1, up in f..2f-1; out and dout [n, f]
 *           contiguous; dgu [n, 2f] contiguous.
 *   rms_norm_bwd: x and dx [n, H] fp32 contiguous, dy [n, H] bf16 contiguous.
 *   rms_norm_fwd: x [n, H] (fp32 or bf16) with row stride ldx; y [n, H] bf16 contiguous.
 *   rope:   x [n, H, hd] with row stride ldx, heads contiguous within a row (head stride hd); rot [n, hd/2]
 *           (cos, sin) float pairs with row stride ldr (floats); y [n, H, hd] contiguous. Each head's
 *           elements (2i, 2i+1) form one complex number multiplied by rot[i] (by its conjugate: conj = 1).
 */
#include "common.h"

/* out = silu(gate) * up */
void t1_swiglu_fwd(const uint16_t *restrict gu, uint16_t *restrict out, long n, long f, long ld, int nt) {
  PARALLEL
  for (long r = 0; r < n; r++) {
    const uint16_t *restrict g = gu + r * ld, *restrict u = g + f;
    uint16_t *restrict o = out + r * f;
    for (long j = 0; j < f; j++) {
      const float x = bf16_to_f32(g[j]);
      const float s = 1.f / (1.f + exp_clamped(-x)); /* (x / (1 + e) compiles to slower code) */
      o[j] = f32_to_bf16(x * s * bf16_to_f32(u[j]));
    }
  }
}

/* d gate = dout · up · s · (1 + gate · (1 - s)),  d up = dout · gate · s,  s = sigmoid(gate) */
void t1_swiglu_bwd(const uint16_t *restrict gu, const uint16_t *restrict dout, uint16_t *restrict dgu, long n,
                   long f, long ld, int nt) {
  PARALLEL
  for (long r = 0; r < n; r++) {
    const uint16_t *restrict g = gu + r * ld, *restrict u = g + f, *restrict d = dout + r * f;
    uint16_t *restrict dg = dgu + r * 2 * f, *restrict du = dg + f;
    for (long j = 0; j < f; j++) {
      const float x = bf16_to_f32(g[j]), y = bf16_to_f32(u[j]), dy = bf16_to_f32(d[j]);
      const float s = 1.f / (1.f + exp_clamped(-x));
      dg[j] = f32_to_bf16(dy * y * s * (1.f + x * (1.f - s)));
      du[j] = f32_to_bf16(dy * x * s);
    }
  }
}

/* y = x · rot per complex pair (x · conj(rot) when conj: the backward of the rotation) */
void t1_rope(const uint16_t *restrict x, const float *restrict rot, uint16_t *restrict y, long n, int H, int hd,
             long ldx, long ldr, int conj, int nt) {
  const float sign = conj ? -1.f : 1.f;
  PARALLEL
  for (long r = 0; r < n; r++) {
    const float *restrict cs = rot + r * ldr;
    for (int h = 0; h < H; h++) {
      const uint16_t *restrict xh = x + r * ldx + (long)h * hd;
      uint16_t *restrict yh = y + (r * H + h) * hd;
      for (int i = 0; i < hd / 2; i++) {
        const float c = cs[2 * i], s = sign * cs[2 * i + 1];
        const float a = bf16_to_f32(xh[2 * i]), b = bf16_to_f32(xh[2 * i + 1]);
        yh[2 * i] = f32_to_bf16(a * c - b * s);
        yh[2 * i + 1] = f32_to_bf16(a * s + b * c);
      }
    }
  }
}

/* The backward of y = x · r (cast to bf16), r = 1 / sqrt(mean(x^2) + eps), an RMSNorm without weight:
   dx = r · dy - x · r^3 · (dy . x) / H. r is recomputed from x (the row is read anyway). */
void t1_rms_norm_bwd(const float *restrict x, const uint16_t *restrict dy, float *restrict dx, long n, long H,
                     float eps, int nt) {
  PARALLEL
  for (long row = 0; row < n; row++) {
    const float *restrict xr = x + row * H;
    const uint16_t *restrict dr = dy + row * H;
    float *restrict out = dx + row * H;
    float ss = 0.f, dot = 0.f;
    for (long j = 0; j < H; j++) {
      ss += xr[j] * xr[j];
      dot += bf16_to_f32(dr[j]) * xr[j];
    }
    const float r = 1.f / sqrtf(ss / (float)H + eps);
    const float c = r * r * r * dot / (float)H;
    for (long j = 0; j < H; j++) out[j] = r * bf16_to_f32(dr[j]) - c * xr[j];
  }
}

/* y = bf16(x · r), r = 1 / sqrt(mean(x^2) + eps): an RMSNorm without weight (folded into the next matrix),
   fp32 math, rows with stride ldx (elements) in, contiguous rows out. The _f32 variant reads fp32 (the
   training forward's residual stream), the _bf16 one bf16 (the sampler's). */
#define RMS_NORM_FWD(WIDEN)                                                      \
  PARALLEL                                                                       \
  for (long row = 0; row < n; row++) {                                           \
    float ss = 0.f;                                                              \
    for (long j = 0; j < H; j++) {                                               \
      const float v = WIDEN(x[row * ldx + j]);                                   \
      ss += v * v;                                                               \
    }                                                                            \
    const float r = 1.f / sqrtf(ss / (float)H + eps);                            \
    for (long j = 0; j < H; j++) y[row * H + j] = f32_to_bf16(WIDEN(x[row * ldx + j]) * r); \
  }
#define AS_IS(v) (v)
void t1_rms_norm_fwd_f32(const float *restrict x, long ldx, uint16_t *restrict y, long n, long H, float eps,
                         int nt) {
  RMS_NORM_FWD(AS_IS)
}
void t1_rms_norm_fwd_bf16(const uint16_t *restrict x, long ldx, uint16_t *restrict y, long n, long H, float eps,
                          int nt) {
  RMS_NORM_FWD(bf16_to_f32)
}
