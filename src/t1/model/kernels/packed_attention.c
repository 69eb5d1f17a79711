/* Causal attention over packed sequences, forward and backward, for t1's bf16 training passes on CPUs
 * (t1/model/forward.py's packed_logits, via t1/model/kernels/ops.py).
 *
 * Why: PyTorch computes attention over packed ("padding-free") sequences as batched matmuls over groups of
 * similar-length sequences padded to the group's longest, which means a gather into the padded layout, an
 * additive [rows·heads, T, T] mask, bf16 score and probability tensors written out and read back (large
 * ones page-faulted in), a softmax pass, and the scatter back — several passes over T×T-sized tensors per
 * layer. These loops read q, k and v straight from the packed projection (shared prompt prefixes included),
 * keep scores in a small per-thread buffer, compute in fp32 and write only the output and one log-sum-exp per
 * query and head (the backward recomputes the probabilities from it, as FlashAttention does).
 *
 * Layout:
 *   qk [n, Hq + Hkv, D] bf16, row stride ldqk: the rotated q heads, then the k heads; q pre-scaled;
 *   v  [n, Hkv, D] bf16, row stride ldv;
 *   sequence s is the flat rows seq_idx[seq_ptr[s] .. seq_ptr[s+1]-1] in order (a shared prefix appears in
 *   every sequence that shares it); its queries own_from[s].. are its own (earlier ones belong to the
 *   sequence that computes the shared prefix), so each flat row is a query exactly once;
 *   out [n, Hq·D] bf16 and lse [n, Hq] fp32 (forward); lse and dout [n, Hq·D] bf16; dqk [n, Hq + Hkv, D] and
 *   dv [n, Hkv, D] fp32, zero on entry (backward);
 *   scratch: nt blocks of `stride` floats (the caller sizes them for the longest sequence: see ops.py);
 *   the backward runs per unit: unit u is sequences unit_seqs[unit_ptr[u] .. unit_ptr[u+1]-1], all those that
 *   share rows (a prompt's samples), so one thread owns every key/value row it accumulates into.
 * Head h reads kv head h / (Hq / Hkv). Each (sequence, head) first copies its keys and values into fp32
 * buffers (K transposed for the score products), padded with zeros to multiples of 16 in both directions;
 * queries then go in blocks of QB, and every product runs as QB × 16 register tiles that the compiler
 * vectorises (one 16-float vector per query row), so each key or value row is read once per block.
 */
#include "common.h"
#ifdef _OPENMP
#include <omp.h>
#define THREAD omp_get_thread_num()
#else
#define THREAD 0
#endif

#define QB 8
#define VL 16 /* tile width: one 512-bit vector of floats (two 256-bit ones elsewhere) */
/* GCC/Clang vector types: the tiles must vectorise along the 16 columns (left alone, GCC vectorised the 8
   query rows instead, with a permute per multiply); the unaligned type loads from any float address. */
typedef float vf __attribute__((vector_size(VL * sizeof(float))));
typedef float vf_u __attribute__((vector_size(VL * sizeof(float)), aligned(sizeof(float))));
#define LOAD(p) (*(const vf_u *)(p))
#define STORE(p, x) (*(vf_u *)(p) = (x))

static inline int round_up(int x) { return (x + VL - 1) / VL * VL; }

/* One sequence's keys and values of kv head hk in fp32, zero-padded: KT [Dp][Lp] (transposed) and V [Lp][Dp];
   for the backward also K [Lp][Dp] and VT [Dp][Lp] (NULL to skip). */
static void load_kv(const uint16_t *qk, long ldqk, int Hq, const uint16_t *v, long ldv, int hk, const int *idx,
                    int L, int D, float *KT, float *V, float *K, float *VT) {
  const int Lp = round_up(L), Dp = round_up(D);
  float kv[Dp], vv[Dp];
  for (int d = D; d < Dp; d++) kv[d] = vv[d] = 0.f;
  for (int j = 0; j < Lp; j++) {
    if (j < L) {
      const uint16_t *kr = qk + (long)idx[j] * ldqk + (long)(Hq + hk) * D, *vr = v + (long)idx[j] * ldv + (long)hk * D;
      if (j + 4 < L) { /* rows are scattered (shared prefixes, strides of whole projections): fetch ahead */
        __builtin_prefetch(qk + (long)idx[j + 4] * ldqk + (long)(Hq + hk) * D);
        __builtin_prefetch(v + (long)idx[j + 4] * ldv + (long)hk * D);
      }
      for (int d = 0; d < D; d++) {
        kv[d] = bf16_to_f32(kr[d]);
        vv[d] = bf16_to_f32(vr[d]);
      }
    } else {
      for (int d = 0; d < D; d++) kv[d] = vv[d] = 0.f;
    }
    for (int d = 0; d < Dp; d++) {
      KT[(long)d * Lp + j] = kv[d];
      V[(long)j * Dp + d] = vv[d];
      if (K) K[(long)j * Dp + d] = kv[d];
      if (VT) VT[(long)d * Lp + j] = vv[d];
    }
  }
}

/* QB rows of n (of D, padded to Dp) bf16 values each, from flat rows idx[0..n-1] at column offset col, into
   X [QB][Dp]; rows n.. and columns D.. zero */
static void load_rows(const uint16_t *src, long ld, long col, const int *idx, int n, int D, float *X) {
  const int Dp = round_up(D);
  for (int q = 0; q < QB; q++) {
    float *restrict x = X + q * Dp;
    int d = 0;
    if (q < n) {
      const uint16_t *restrict r = src + (long)idx[q] * ld + col;
      for (; d < D; d++) x[d] = bf16_to_f32(r[d]);
    }
    for (; d < Dp; d++) x[d] = 0.f;
  }
}

/* C[q][j] = sum_k A[q][k] · B[k][j] for the QB rows of A, k < K, j < N (a multiple of VL); row strides lda,
   ldb, ldc. QB × VL tiles, accumulators in registers. Every product of the kernel is one of these: scores
   Q·Kᵀ and dO·Vᵀ (B = K or V transposed), outputs P·V and dS·K (B row-major). */
static void tile_matmul(const float *restrict A, int lda, const float *restrict B, int ldb, int K, int N,
                        float *restrict C, int ldc) {
  for (int j0 = 0; j0 < N; j0 += VL) {
    vf acc[QB];
    for (int q = 0; q < QB; q++) acc[q] = (vf){0};
    for (int k = 0; k < K; k++) {
      const vf b = LOAD(B + (long)k * ldb + j0);
      for (int q = 0; q < QB; q++) acc[q] += A[(long)q * lda + k] * b;
    }
    for (int q = 0; q < QB; q++) STORE(C + (long)q * ldc + j0, acc[q]);
  }
}

/* Row q (< nb) of a score block -> softmax probabilities over keys 0..t0+q (in place), zeros after, up to
   Tp; rows nb.. all zero. Returns nothing; writes each row's log-sum-exp to lse_out[q] and 1/sum to inv[q]. */
static void block_softmax(float *S, int Lp, int nb, int t0, int Tp, float *lse_out, float *inv) {
  for (int q = 0; q < QB; q++) {
    float *restrict sr = S + (long)q * Lp;
    const int n_keys = q < nb ? t0 + q + 1 : 0; /* causal: keys 0..t0+q */
    float m = -INFINITY;
    for (int j = 0; j < n_keys; j++) m = sr[j] > m ? sr[j] : m;
    if (m == -INFINITY) m = 0.f;
    float sum = 0.f;
    for (int j = 0; j < n_keys; j++) {
      const float e = exp_softmax(sr[j] - m);
      sr[j] = e;
      sum += e;
    }
    for (int j = n_keys; j < Tp; j++) sr[j] = 0.f;
    if (q < nb) {
      lse_out[q] = m + logf(sum);
      inv[q] = 1.f / sum;
    }
  }
}

#define FWD_SCRATCH(Lp, Dp) (2L * (Lp) * (Dp) + (long)QB * (Lp) + 2L * QB * (Dp))
#define BWD_SCRATCH(Lp, Dp) (6L * (Lp) * (Dp) + 2L * QB * (Lp) + 3L * QB * (Dp))

/* Floats of scratch per thread for sequences up to L long with head size D (ops.py sizes the buffer). */
long t1_attn_scratch(int L, int D, int backward) {
  const int Lp = round_up(L), Dp = round_up(D);
  return backward ? BWD_SCRATCH(Lp, Dp) : FWD_SCRATCH(Lp, Dp);
}

void t1_attn_fwd(const uint16_t *qk, long ldqk, const uint16_t *v, long ldv, const int *seq_ptr, const int *seq_idx,
                 const int *own_from, int S_, int Hq, int Hkv, int D, uint16_t *out, float *lse, float *scratch,
                 long stride, int nt) {
  const int g = Hq / Hkv, Dp = round_up(D);
  _Pragma("omp parallel for schedule(dynamic) num_threads(nt)")
  for (long item = 0; item < (long)S_ * Hq; item++) {
    const int s = (int)(item / Hq), h = (int)(item % Hq);
    const int L = seq_ptr[s + 1] - seq_ptr[s], Lp = round_up(L);
    const int *idx = seq_idx + seq_ptr[s];
    float *KT = scratch + THREAD * stride, *V = KT + (long)Lp * Dp, *Sc = V + (long)Lp * Dp,
          *Q = Sc + (long)QB * Lp, *O = Q + QB * Dp;
    load_kv(qk, ldqk, Hq, v, ldv, h / g, idx, L, D, KT, V, 0, 0);
    for (int t0 = own_from[s]; t0 < L; t0 += QB) {
      const int nb = L - t0 < QB ? L - t0 : QB, Tp = round_up(t0 + nb);
      float lse_q[QB], inv[QB];
      load_rows(qk, ldqk, (long)h * D, idx + t0, nb, D, Q);
      tile_matmul(Q, Dp, KT, Lp, Dp, Tp, Sc, Lp);
      block_softmax(Sc, Lp, nb, t0, Tp, lse_q, inv);
      tile_matmul(Sc, Lp, V, Dp, Tp, Dp, O, Dp);
      for (int q = 0; q < nb; q++) {
        const long f = idx[t0 + q];
        uint16_t *orow = out + f * Hq * D + (long)h * D;
        for (int d = 0; d < D; d++) orow[d] = f32_to_bf16(O[q * Dp + d] * inv[q]);
        lse[f * Hq + h] = lse_q[q];
      }
    }
  }
}

void t1_attn_bwd(const uint16_t *qk, long ldqk, const uint16_t *v, long ldv, const int *seq_ptr, const int *seq_idx,
                 const int *own_from, const int *unit_ptr, const int *unit_seqs, int U, int Hq, int Hkv, int D,
                 const float *lse, const uint16_t *dout, float *dqk, float *dv, float *scratch,
                 long stride, int nt) {
  const int g = Hq / Hkv, W = Hq + Hkv, Dp = round_up(D);
  _Pragma("omp parallel for schedule(dynamic) num_threads(nt)")
  for (long item = 0; item < (long)U * Hkv; item++) {
    const int u = (int)(item / Hkv), hk = (int)(item % Hkv);
    for (int si = unit_ptr[u]; si < unit_ptr[u + 1]; si++) {
      const int s = unit_seqs[si];
      const int L = seq_ptr[s + 1] - seq_ptr[s], Lp = round_up(L);
      const int *idx = seq_idx + seq_ptr[s];
      float *KT = scratch + THREAD * stride, *V = KT + (long)Lp * Dp, *K = V + (long)Lp * Dp,
            *VT = K + (long)Lp * Dp, *P = VT + (long)Lp * Dp, *dS = P + (long)QB * Lp, *Q = dS + (long)QB * Lp,
            *dO = Q + QB * Dp, *dQ = dO + QB * Dp, *dK = dQ + QB * Dp, *dV = dK + (long)Lp * Dp;
      load_kv(qk, ldqk, Hq, v, ldv, hk, idx, L, D, KT, V, K, VT);
      for (long x = 0; x < (long)Lp * Dp; x++) dK[x] = dV[x] = 0.f; /* this sequence's share, added at the end */
      for (int h = hk * g; h < (hk + 1) * g; h++) {
        for (int t0 = own_from[s]; t0 < L; t0 += QB) {
          const int nb = L - t0 < QB ? L - t0 : QB, T = t0 + nb, Tp = round_up(T);
          load_rows(qk, ldqk, (long)h * D, idx + t0, nb, D, Q);
          load_rows(dout, (long)Hq * D, (long)h * D, idx + t0, nb, D, dO);
          tile_matmul(Q, Dp, KT, Lp, Dp, Tp, P, Lp);
          tile_matmul(dO, Dp, VT, Lp, Dp, Tp, dS, Lp); /* dP = dO · Vᵀ */
          for (int q = 0; q < QB; q++) {
            float *restrict pr = P + (long)q * Lp, *restrict sr = dS + (long)q * Lp;
            const int n_keys = q < nb ? t0 + q + 1 : 0;
            const float l = q < nb ? lse[(long)idx[t0 + q] * Hq + h] : 0.f;
            /* delta = sum_j P·dP (= dO · O, but exact in fp32: the stored O is rounded to bf16) */
            float delta = 0.f;
            for (int j = 0; j < n_keys; j++) {
              const float p = exp_softmax(pr[j] - l);
              pr[j] = p;
              delta += p * sr[j];
            }
            for (int j = 0; j < n_keys; j++) sr[j] = pr[j] * (sr[j] - delta);
            for (int j = n_keys; j < Tp; j++) pr[j] = sr[j] = 0.f;
          }
          tile_matmul(dS, Lp, K, Dp, Tp, Dp, dQ, Dp); /* dQ = dS · K */
          for (int q = 0; q < nb; q++) {
            float *dq = dqk + ((long)idx[t0 + q] * W + h) * D;
            for (int d = 0; d < D; d++) dq[d] = dQ[q * Dp + d];
          }
          /* dK[j] += sum_q dS[q][j] Q[q],  dV[j] += sum_q P[q][j] dO[q] */
          for (int j = 0; j < T; j++) {
            for (int d0 = 0; d0 < Dp; d0 += VL) {
              vf ak = LOAD(dK + (long)j * Dp + d0), av = LOAD(dV + (long)j * Dp + d0);
              for (int q = 0; q < QB; q++) {
                ak += dS[(long)q * Lp + j] * LOAD(Q + q * Dp + d0);
                av += P[(long)q * Lp + j] * LOAD(dO + q * Dp + d0);
              }
              STORE(dK + (long)j * Dp + d0, ak);
              STORE(dV + (long)j * Dp + d0, av);
            }
          }
        }
      }
      for (int j = 0; j < L; j++) { /* this thread owns these rows: no other unit touches them */
        float *restrict dk = dqk + ((long)idx[j] * W + Hq + hk) * D, *restrict dvr = dv + ((long)idx[j] * Hkv + hk) * D;
        for (int d = 0; d < D; d++) {
          dk[d] += dK[(long)j * Dp + d];
          dvr[d] += dV[(long)j * Dp + d];
        }
      }
    }
  }
}
