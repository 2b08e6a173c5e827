/* Exact weight-only linear kernels: int4 and int8 weights times float32 activations.
 *
 *   y[m, n] = sum_k w[n, k] * x[m, k],   w[n, k] = (c[n, k] - z[n, g]) * s[n, g] (+ o[n, g])
 *
 * c are the stored codes (0..15 for int4, -128..127 for int8), g = k / group the group, s its
 * scale, z an integer zero point (8 for symmetric int4 and q4_0, 0 for q4_1 and int8) and o a
 * float offset (q4_1, int4 with zero_point="float"; none otherwise). Each w[n, k] is computed in
 * float32 registers with the reference's own operations -- (c - z) exactly, one rounded multiply,
 * one rounded add when there is an offset, never fused -- so it is bit-for-bit the value
 * llmref.quant.dequantize gives; the products w * x are then summed in float32 in this kernel's
 * order. Only that order differs from the reference (dequantize, then F.linear).
 *
 * Layouts (llmref/quant/_wonly.py packs them): every row is padded to Kp, a multiple of 32, with
 * zero codes; int4 rows are Kp / 2 bytes in blocks of 32 inputs (16 bytes), byte j holding
 * c[j] in its low nibble and c[j + 16] in its high one (ggml's q4_0 order); int8 rows are Kp
 * int8 codes. A group is a whole number of 32-blocks (bpg), or the whole padded row.
 * Rows are stored in quads (QUAD = 4, N padded with zero rows): block kb of rows 4q .. 4q + 3
 * lie next to each other, then block kb + 1 of the same rows, so a pass over a quad reads
 * one contiguous stream that the hardware prefetcher follows (row by row, a one-token pass
 * read four short streams and reached about half the machine's read bandwidth).
 * Scales and offsets are float32 or float16 (`half`), one per (row, group).
 *
 * Two instruction-set paths from this one source, compiled separately by llmref/quant/_native.py
 * (-DLLMREF_ISA_AVX512 with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c, or
 * -DLLMREF_ISA_AVX2 with -mavx2 -mfma -mf16c; both with -ffp-contract=off). The AVX-512 path
 * looks int4 weights up in a 16-entry table of the group's dequantized values (vpermps uses the
 * low 4 bits of each index lane, so a byte's low nibble needs no mask); the AVX2 path converts
 * the codes and applies zero, scale and offset per element.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(LLMREF_ISA_AVX512)
#define ISA_BITS 512
#elif defined(LLMREF_ISA_AVX2)
#define ISA_BITS 256
#else
#error "compile with -DLLMREF_ISA_AVX512 or -DLLMREF_ISA_AVX2"
#endif

#define INLINE static inline __attribute__((always_inline))

int llmref_wonly_isa_bits(void) { return ISA_BITS; }

int llmref_wonly_supported(void) {
    __builtin_cpu_init();
#if ISA_BITS == 512
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("avx2");
#else
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
}

typedef struct {
    const uint8_t *codes; /* int4: (Np, Kp / 2) bytes; int8: (Np, Kp) int8; in quads of rows */
    const void *scale;    /* (N, G) float32, or float16 when half */
    const void *offset;   /* (N, G) like scale, or NULL */
    const uint8_t *zero;  /* (N, G) uint8 zero points, or NULL: zconst */
    float zconst;
    int32_t half;
    int64_t N, K, Kp, G, bpg; /* rows, inputs, padded inputs, groups per row, blocks per group */
} wq_t;

enum { SYM = 0, ZERO = 1, OFFSET = 2 }; /* int4 modes: constant z, uint8 z, float offset */

/* One row's group parameters as float32 (length G each; z and o only where the mode has them). */
typedef struct {
    const float *s, *z, *o;
} rowp_t;

/* Float16 or float32 params -> float32 (into buf when a conversion is needed). */
static const float *as_float(const void *p, int half, int64_t i0, int64_t G, float *buf) {
    if (!half) return (const float *)p + i0;
    const uint16_t *h = (const uint16_t *)p + i0;
    int64_t i = 0;
    for (; i + 8 <= G; i += 8)
        _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < G; ++i) buf[i] = _cvtsh_ss(h[i]);
    return buf;
}

/* The params of row n for groups [g0, g1), indexed from g0; buf holds 3 * (g1 - g0) floats. */
static rowp_t row_params(const wq_t *w, int64_t n, int64_t g0, int64_t g1, float *buf) {
    const int64_t G = g1 - g0, i0 = n * w->G + g0;
    rowp_t p;
    p.s = as_float(w->scale, w->half, i0, G, buf);
    p.o = w->offset ? as_float(w->offset, w->half, i0, G, buf + G) : NULL;
    p.z = NULL;
    if (w->zero) {
        for (int64_t i = 0; i < G; ++i) buf[2 * G + i] = (float)w->zero[i0 + i];
        p.z = buf + 2 * G;
    }
    return p;
}

#if ISA_BITS == 512
/* ------------------------------------------------------------------ AVX-512 */
/* A group's parameters in a register: for int4 the 16 values (c - z) * s (+ o) of c = 0..15,
 * for int8 the scale. */
INLINE __m512 group512(const wq_t *w, const rowp_t *p, int64_t gi, const int MODE, const int BITS) {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    __m512 s = _mm512_set1_ps(p->s[gi]);
    if (BITS == 8) return s;
    if (MODE == OFFSET) return _mm512_add_ps(_mm512_mul_ps(iota, s), _mm512_set1_ps(p->o[gi]));
    float z = MODE == ZERO ? p->z[gi] : w->zconst;
    return _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), s);
}

/* The 32 weights of the block at blk: inputs 0-15 in w[0], 16-31 in w[1]. */
INLINE void block512(const uint8_t *blk, __m512 gp, const int BITS, __m512 *w) {
    if (BITS == 4) {
        __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)blk));
        w[0] = _mm512_permutexvar_ps(c, gp); /* vpermps reads the low 4 bits: the low nibble */
        w[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), gp);
    } else {
        const __m128i *q = (const __m128i *)blk;
        w[0] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q))), gp);
        w[1] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q + 1))), gp);
    }
}

#define VEC __m512
#define VLEN 16
#define VZERO() _mm512_setzero_ps()
#define VLOAD(p) _mm512_loadu_ps(p)
#define VSTORE(p, v) _mm512_storeu_ps(p, v)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VSUM(v) _mm512_reduce_add_ps(v)
#define VBCAST(p) _mm512_set1_ps(*(p))
#define GEMM_MR 12 /* activation rows per micro-tile: 2 * 12 accumulators of 32 */
#define VADD(a, b) _mm512_add_ps(a, b)
#define GROUP(w, p, gi, MODE, BITS) group512(w, p, gi, MODE, BITS)
#define BLOCK(blk, gp, MODE, BITS, v) block512(blk, gp, BITS, v)
typedef __m512 gp_t;

#else
/* --------------------------------------------------------------------- AVX2 */
typedef struct {
    __m256 z, s, o;
} grp_t;

INLINE grp_t group4(const wq_t *w, const rowp_t *p, int64_t gi, const int MODE) {
    grp_t g;
    g.s = _mm256_set1_ps(p->s[gi]);
    g.z = _mm256_set1_ps(MODE == ZERO ? p->z[gi] : MODE == SYM ? w->zconst : 0.0f);
    g.o = _mm256_set1_ps(MODE == OFFSET ? p->o[gi] : 0.0f);
    return g;
}

/* (c - z) * s (+ o) for 8 codes in int32 lanes. */
INLINE __m256 deq4(__m256i c, grp_t g, const int MODE) {
    __m256 cf = _mm256_cvtepi32_ps(c);
    if (MODE == OFFSET) return _mm256_add_ps(_mm256_mul_ps(cf, g.s), g.o);
    return _mm256_mul_ps(_mm256_sub_ps(cf, g.z), g.s);
}

/* The 32 weights of the block at b, in v[0..3] (inputs 0-7 ... 24-31). */
INLINE void block4(const uint8_t *b, grp_t g, const int MODE, __m256 *v) {
    const __m256i low4 = _mm256_set1_epi32(0x0F);
    __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b));
    __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8)));
    v[0] = deq4(_mm256_and_si256(lo, low4), g, MODE);
    v[1] = deq4(_mm256_and_si256(hi, low4), g, MODE);
    v[2] = deq4(_mm256_srli_epi32(lo, 4), g, MODE);
    v[3] = deq4(_mm256_srli_epi32(hi, 4), g, MODE);
}

INLINE void block8(const int8_t *b, __m256 s, __m256 *v) {
    for (int q = 0; q < 4; ++q)
        v[q] = _mm256_mul_ps(
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 8 * q)))), s);
}

INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INLINE grp_t group256(const wq_t *w, const rowp_t *p, int64_t gi, const int MODE, const int BITS) {
    grp_t g;
    if (BITS == 4) return group4(w, p, gi, MODE);
    g.s = _mm256_set1_ps(p->s[gi]);
    g.z = g.o = _mm256_setzero_ps();
    return g;
}

/* The 32 weights of the block at blk: inputs 8q .. 8q + 7 in w[q]. */
INLINE void block256(const uint8_t *blk, grp_t g, const int MODE, const int BITS, __m256 *w) {
    if (BITS == 4)
        block4(blk, g, MODE, w);
    else
        block8((const int8_t *)blk, g.s, w);
}

#define VEC __m256
#define VLEN 8
#define VZERO() _mm256_setzero_ps()
#define VLOAD(p) _mm256_loadu_ps(p)
#define VSTORE(p, v) _mm256_storeu_ps(p, v)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VSUM(v) hsum(v)
#define VBCAST(p) _mm256_broadcast_ss(p)
#define GEMM_MR 6 /* activation rows per micro-tile: 2 * 6 accumulators of 16 */
#define VADD(a, b) _mm256_add_ps(a, b)
#define GROUP(w, p, gi, MODE, BITS) group256(w, p, gi, MODE, BITS)
#define BLOCK(blk, gp, MODE, BITS, v) block256(blk, gp, MODE, BITS, v)
typedef grp_t gp_t;
#endif

#define NV (32 / VLEN) /* vectors per block of 32 inputs */
#define QUAD 4          /* rows stored interleaved, block by block (see the header) */
#ifndef LLMREF_PREFETCH
#define LLMREF_PREFETCH 1024 /* bytes ahead in each weight row the kernel asks for (0: none) */
#endif

/* Bytes of one block of 32 codes. */
#define BLOCK_BYTES(BITS) ((BITS) * 4)

/* The first block of row n: rows are stored in quads (see the header), so block kb of row n
 * is at this address + kb * QUAD * BLOCK_BYTES(BITS). */
INLINE const uint8_t *row_start(const wq_t *w, int64_t n, const int BITS) {
    const int64_t KB = w->Kp / 32;
    return w->codes + ((n / QUAD) * KB * QUAD + n % QUAD) * BLOCK_BYTES(BITS);
}

/* R weight rows n.. (params p[0..R-1]; all in one quad) against MB activation rows:
 * y[m * ldy + n + r]. Two accumulators per (row, token); the block's vectors alternate
 * between them. The quad's blocks kb of its rows are adjacent, so the tile reads one
 * stream; it asks for the line LLMREF_PREFETCH bytes ahead in that stream. */
INLINE void tile(const wq_t *w, int64_t n, const int R, const rowp_t *p, const int MODE,
                 const int BITS, const float *x, int64_t ldx, const int MB, float *y, int64_t ldy) {
    VEC acc[4][4][2];
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MB; ++m) acc[r][m][0] = acc[r][m][1] = VZERO();
    const int64_t G = w->G, bpg = w->bpg, bb = BLOCK_BYTES(BITS);
    const uint8_t *codes = row_start(w, n, BITS);
    for (int64_t gi = 0; gi < G; ++gi) {
        gp_t gp[4];
        for (int r = 0; r < R; ++r) gp[r] = GROUP(w, p + r, gi, MODE, BITS);
        for (int64_t kb = gi * bpg; kb < (gi + 1) * bpg; ++kb) {
            const uint8_t *blk = codes + kb * QUAD * bb;
            if (LLMREF_PREFETCH)
                for (int64_t line = 0; line < QUAD * bb; line += 64)
                    __builtin_prefetch(blk + line + LLMREF_PREFETCH, 0, 0);
            for (int r = 0; r < R; ++r) {
                VEC v[NV];
                BLOCK(blk + r * bb, gp[r], MODE, BITS, v);
                for (int m = 0; m < MB; ++m) {
                    const float *xm = x + m * ldx + kb * 32;
                    for (int q = 0; q < NV; ++q)
                        acc[r][m][q & 1] = VFMA(v[q], VLOAD(xm + q * VLEN), acc[r][m][q & 1]);
                }
            }
        }
    }
    for (int r = 0; r < R; ++r)
        for (int m = 0; m < MB; ++m) y[m * ldy + n + r] = VSUM(VADD(acc[r][m][0], acc[r][m][1]));
}

/* Dequantize blocks [kb0, kb1) of row n to out[0 .. 32 (kb1 - kb0)); p holds the row's params
 * from group kb0 / bpg on. */
INLINE void deq_blocks(const wq_t *w, int64_t n, const rowp_t *p, const int MODE, const int BITS,
                       int64_t kb0, int64_t kb1, float *out) {
    const uint8_t *row = row_start(w, n, BITS);
    const int64_t g0 = kb0 / w->bpg;
    for (int64_t gi = g0; gi * w->bpg < kb1; ++gi) {
        gp_t gp = GROUP(w, p, gi - g0, MODE, BITS);
        const int64_t b0 = gi * w->bpg > kb0 ? gi * w->bpg : kb0;
        const int64_t b1 = (gi + 1) * w->bpg < kb1 ? (gi + 1) * w->bpg : kb1;
        for (int64_t kb = b0; kb < b1; ++kb) {
            VEC v[NV];
            BLOCK(row + kb * QUAD * BLOCK_BYTES(BITS), gp, MODE, BITS, v);
            for (int q = 0; q < NV; ++q) VSTORE(out + (kb - kb0) * 32 + q * VLEN, v[q]);
        }
    }
}

/* ------------------------------------------------------------------ drivers */
static int valid(const wq_t *w, int64_t M) {
    return M >= 0 && w->N >= 0 && w->K > 0 && w->Kp % 32 == 0 && w->Kp >= w->K &&
           w->Kp - w->K < 32 && w->G > 0 && w->bpg > 0 && w->G * w->bpg * 32 == w->Kp;
}

#define ROWS_PER_TASK 16

/* Rows [n0, n1) (at most ROWS_PER_TASK) against all M activation rows; buf: params scratch. */
INLINE void run_task(const wq_t *w, const int BITS, const int MODE, int64_t n0, int64_t n1,
                     const float *x, int64_t ldx, int64_t M, float *y, float *buf) {
    const int64_t N = w->N;
    rowp_t p[ROWS_PER_TASK];
    for (int64_t n = n0; n < n1; ++n)
        p[n - n0] = row_params(w, n, 0, w->G, buf + (n - n0) * 3 * w->G);
#define TILE(n, R, m, MB)                                                                         \
    do {                                                                                          \
        tile(w, n, R, p + ((n) - n0), MODE, BITS, x + (m) * ldx, ldx, MB, y + (m) * N, N);       \
    } while (0)
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
        int64_t n = n0;
        for (; n + 2 <= n1; n += 2) TILE(n, 2, m, 4);
        for (; n < n1; ++n) TILE(n, 1, m, 4);
    }
    for (; m + 2 <= M; m += 2) {
        int64_t n = n0;
        for (; n + 2 <= n1; n += 2) TILE(n, 2, m, 2);
        for (; n < n1; ++n) TILE(n, 1, m, 2);
    }
    for (; m < M; ++m) {
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) TILE(n, 4, m, 1);
        for (; n < n1; ++n) TILE(n, 1, m, 1);
    }
#undef TILE
}

static int mode_of(const wq_t *w) { return w->zero ? ZERO : w->offset ? OFFSET : SYM; }

/* y (M, N) = x (M, K) w^T; bits 4 or 8. 0 on success. */
int llmref_wonly_linear(const float *x_in, int64_t M, const wq_t *w, int bits, float *y,
                        int nthreads) {
    if (!valid(w, M) || (bits != 4 && bits != 8) || (bits == 8 && mode_of(w) != SYM)) return 1;
    const int64_t N = w->N, K = w->K, Kp = w->Kp;
    const float *x = x_in;
    float *xp = NULL;
    if (Kp != K) { /* zero-pad each activation row to Kp (the padded codes meet zeros) */
        xp = calloc((size_t)(M * Kp), sizeof(float));
        if (!xp) return 2;
        for (int64_t m = 0; m < M; ++m) memcpy(xp + m * Kp, x_in + m * K, sizeof(float) * K);
        x = xp;
    }
    const int64_t tasks = (N + ROWS_PER_TASK - 1) / ROWS_PER_TASK;
    const int parallel = nthreads > 1 && M * N * Kp >= (1 << 18);
    const int mode = mode_of(w);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (parallel)
    {
        float *buf = malloc(sizeof(float) * 3 * w->G * ROWS_PER_TASK);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            if (!buf) continue;
            const int64_t n0 = t * ROWS_PER_TASK;
            const int64_t n1 = n0 + ROWS_PER_TASK < N ? n0 + ROWS_PER_TASK : N;
            if (bits == 8)
                run_task(w, 8, SYM, n0, n1, x, Kp, M, y, buf);
            else if (mode == SYM)
                run_task(w, 4, SYM, n0, n1, x, Kp, M, y, buf);
            else if (mode == ZERO)
                run_task(w, 4, ZERO, n0, n1, x, Kp, M, y, buf);
            else
                run_task(w, 4, OFFSET, n0, n1, x, Kp, M, y, buf);
        }
        free(buf);
    }
    free(xp);
    return failed ? 2 : 0;
}

/* out (n1 - n0, Kp) = the dequantized rows [n0, n1), bit-for-bit the reference's values
 * (padding columns: the value of code 0). 0 on success. */
int llmref_wonly_dequantize(const wq_t *w, int bits, int64_t n0, int64_t n1, float *out,
                            int nthreads) {
    if (!valid(w, 0) || (bits != 4 && bits != 8) || n0 < 0 || n1 > w->N || n0 > n1 ||
        (bits == 8 && mode_of(w) != SYM))
        return 1;
    const int parallel = nthreads > 1 && (n1 - n0) * w->Kp >= (1 << 16);
    const int mode = mode_of(w);
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (parallel)
    {
        float *buf = malloc(sizeof(float) * 3 * w->G);
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t n = n0; n < n1; ++n) {
            if (!buf) continue;
            rowp_t p = row_params(w, n, 0, w->G, buf);
            float *o = out + (n - n0) * w->Kp;
            const int64_t KB = w->Kp / 32;
            if (bits == 8)
                deq_blocks(w, n, &p, SYM, 8, 0, KB, o);
            else if (mode == SYM)
                deq_blocks(w, n, &p, SYM, 4, 0, KB, o);
            else if (mode == ZERO)
                deq_blocks(w, n, &p, ZERO, 4, 0, KB, o);
            else
                deq_blocks(w, n, &p, OFFSET, 4, 0, KB, o);
        }
        free(buf);
    }
    return failed ? 2 : 0;
}

/* ------------------------------------------------------------------ GEMM (many tokens) */
/* For many activation rows the kernel above re-dequantizes each weight once per 4 rows. This
 * GEMM dequantizes each weight once per call instead: for a panel of GEMM_NC weight rows and
 * GEMM_KC inputs it writes the dequantized values -- the same registers' values, so the same
 * floats -- transposed into panels of GEMM_NR rows (pb[k * NR + j]), and a register-blocked
 * micro-kernel multiplies GEMM_MR activation rows by one panel, accumulating into y in float32
 * (outer products: broadcast x[m, k] times the NR weights of input k). */
#define GEMM_NR (2 * VLEN)
#define GEMM_KC 256 /* a multiple of 32: chunks start on block boundaries */
#define GEMM_NC 128 /* a multiple of GEMM_NR */

/* c (MR x NR, leading dim ldc) += x (MR rows, leading dim ldx, kc inputs) pb (kc x NR). */
INLINE void micro(const float *pb, int64_t kc, const float *x, int64_t ldx, const int MR,
                  float *c, int64_t ldc) {
    VEC acc[GEMM_MR][2];
    for (int i = 0; i < MR; ++i) {
        acc[i][0] = VLOAD(c + i * ldc);
        acc[i][1] = VLOAD(c + i * ldc + VLEN);
    }
    for (int64_t k = 0; k < kc; ++k) {
        const VEC b0 = VLOAD(pb + k * GEMM_NR), b1 = VLOAD(pb + k * GEMM_NR + VLEN);
        for (int i = 0; i < MR; ++i) {
            const VEC a = VBCAST(x + i * ldx + k);
            acc[i][0] = VFMA(a, b0, acc[i][0]);
            acc[i][1] = VFMA(a, b1, acc[i][1]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        VSTORE(c + i * ldc, acc[i][0]);
        VSTORE(c + i * ldc + VLEN, acc[i][1]);
    }
}

/* micro() with the row count a compile-time constant in each case. */
static void micro_rows(const float *pb, int64_t kc, const float *x, int64_t ldx, int mr,
                       float *c, int64_t ldc) {
    switch (mr) {
#define CASE(R)                                                                                   \
    case R:                                                                                       \
        micro(pb, kc, x, ldx, R, c, ldc);                                                         \
        break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6)
#if GEMM_MR > 6
        CASE(7) CASE(8) CASE(9) CASE(10) CASE(11) CASE(12)
#endif
#undef CASE
    }
}

/* dst[c * ldd + r] = src[r * lds + c] for an 8 x 8 block. */
INLINE void transpose8(const float *src, int64_t lds, float *dst, int64_t ldd) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4)
        for (int h = 0; h < 2; ++h) {
            r[i + h] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0x44);
            r[i + h + 2] = _mm256_shuffle_ps(t[i + h], t[i + h + 2], 0xEE);
        }
    /* r[0] = rows 0-3 of columns 0,4 (128-bit halves), r[2]: columns 1,5, r[1]: 2,6, r[3]: 3,7;
     * r[4..7] the same for rows 4-7. */
    const int col[4] = {0, 2, 1, 3};
    for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + col[i] * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (col[i] + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
}

/* pb (kcp x NR) = rows [n, n + NR) of the weight, inputs [k0, k0 + kcp), dequantized and
 * transposed; rows past N are zeros. tmp: NR * GEMM_KC floats; pbuf: 3 * G floats. */
INLINE void pack(const wq_t *w, const int BITS, const int MODE, int64_t n, int64_t k0,
                 int64_t kcp, float *tmp, float *pbuf, float *pb) {
    const int64_t kb0 = k0 / 32, kb1 = (k0 + kcp) / 32;
    const int64_t g0 = kb0 / w->bpg, g1 = (kb1 - 1) / w->bpg + 1;
    for (int j = 0; j < GEMM_NR; ++j) {
        float *row = tmp + j * GEMM_KC;
        if (n + j < w->N) {
            rowp_t p = row_params(w, n + j, g0, g1, pbuf);
            deq_blocks(w, n + j, &p, MODE, BITS, kb0, kb1, row);
        } else {
            memset(row, 0, sizeof(float) * kcp);
        }
    }
    for (int j = 0; j < GEMM_NR; j += 8)
        for (int64_t k = 0; k < kcp; k += 8)
            transpose8(tmp + j * GEMM_KC + k, GEMM_KC, pb + k * GEMM_NR + j, GEMM_NR);
}

/* Rows [n0, n0 + nc) of y (M, N) = x (M, K) w^T, one panel of at most GEMM_NC weight rows. */
INLINE void gemm_panel(const wq_t *w, const int BITS, const int MODE, const float *x, int64_t M,
                       int64_t n0, int64_t nc, float *y, float *pb, float *tmp, float *pbuf) {
    const int64_t N = w->N, K = w->K;
    const int64_t panels = (nc + GEMM_NR - 1) / GEMM_NR;
    float edge[GEMM_MR * GEMM_NR]; /* the micro-tile of a panel cut by N */
    for (int64_t m = 0; m < M; ++m) memset(y + m * N + n0, 0, sizeof(float) * nc);
    for (int64_t k0 = 0; k0 < K; k0 += GEMM_KC) {
        const int64_t kc = K - k0 < GEMM_KC ? K - k0 : GEMM_KC;
        const int64_t kcp = (kc + 31) / 32 * 32;
        for (int64_t s = 0; s < panels; ++s)
            pack(w, BITS, MODE, n0 + s * GEMM_NR, k0, kcp, tmp, pbuf, pb + s * GEMM_KC * GEMM_NR);
        for (int64_t m = 0; m < M; m += GEMM_MR) {
            const int mr = M - m < GEMM_MR ? (int)(M - m) : GEMM_MR;
            const float *xm = x + m * K + k0;
            for (int64_t s = 0; s < panels; ++s) {
                const float *ps = pb + s * GEMM_KC * GEMM_NR;
                float *ym = y + m * N + n0 + s * GEMM_NR;
                const int64_t cols = nc - s * GEMM_NR < GEMM_NR ? nc - s * GEMM_NR : GEMM_NR;
                if (cols == GEMM_NR) {
                    micro_rows(ps, kc, xm, K, mr, ym, N);
                    continue;
                }
                for (int i = 0; i < mr; ++i) {
                    memset(edge + i * GEMM_NR, 0, sizeof(float) * GEMM_NR);
                    memcpy(edge + i * GEMM_NR, ym + i * N, sizeof(float) * cols);
                }
                micro_rows(ps, kc, xm, K, mr, edge, GEMM_NR);
                for (int i = 0; i < mr; ++i)
                    memcpy(ym + i * N, edge + i * GEMM_NR, sizeof(float) * cols);
            }
        }
    }
}

/* y (M, N) = x (M, K) w^T like llmref_wonly_linear, dequantizing each weight once. */
int llmref_wonly_gemm(const float *x, int64_t M, const wq_t *w, int bits, float *y,
                      int nthreads) {
    if (!valid(w, M) || (bits != 4 && bits != 8) || (bits == 8 && mode_of(w) != SYM)) return 1;
    const int64_t N = w->N, tasks = (N + GEMM_NC - 1) / GEMM_NC;
    const int mode = mode_of(w);
    const int64_t G = w->G < GEMM_KC / 32 + 1 ? w->G : GEMM_KC / 32 + 1;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && tasks > 1)
    {
        float *pb = aligned_alloc(64, sizeof(float) * GEMM_KC * GEMM_NC);
        float *tmp = aligned_alloc(64, sizeof(float) * GEMM_KC * GEMM_NR);
        float *pbuf = malloc(sizeof(float) * 3 * G);
        if (!pb || !tmp || !pbuf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < tasks; ++t) {
            if (failed) continue;
            const int64_t n0 = t * GEMM_NC, nc = N - n0 < GEMM_NC ? N - n0 : GEMM_NC;
            if (bits == 8)
                gemm_panel(w, 8, SYM, x, M, n0, nc, y, pb, tmp, pbuf);
            else if (mode == SYM)
                gemm_panel(w, 4, SYM, x, M, n0, nc, y, pb, tmp, pbuf);
            else if (mode == ZERO)
                gemm_panel(w, 4, ZERO, x, M, n0, nc, y, pb, tmp, pbuf);
            else
                gemm_panel(w, 4, OFFSET, x, M, n0, nc, y, pb, tmp, pbuf);
        }
        free(pb);
        free(tmp);
        free(pbuf);
    }
    return failed ? 2 : 0;
}
