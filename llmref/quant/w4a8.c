/* W4A8 linear for x86 CPUs with AVX512-VNNI: int4 weights, int8 activations.
 *
 *   y[m, n] = sum_g  ws[n, g] * xs[m, g] * sum_{k in g} (c[n, k] - z[n, g]) * xq[m, k]
 *
 * c are the weight codes in 0..15 and z their zero point (8 for symmetric int4),
 * ws the weight group scales. Each row of x is quantized here, in blocks of `ablock`
 * inputs (the weight's group size, or K for one scale per token): with a = max|x|
 * over the block, xq = round-half-even(x * (127 / a)) and xs = a / 127 (the
 * arithmetic of bitsandbytes' int8_vectorwise_quant, so per-token codes match it).
 * vpdpbusd multiplies 64 unsigned codes by 64 signed activations per instruction; the
 * integer sum of a group is exact, and the zero point enters it as -z * sum(xq).
 *
 * Packing (llmref's own): row n of the weight is K / 2 bytes; in each run of 128
 * inputs starting at k0, byte j holds c[n, k0 + j] in its low nibble and
 * c[n, k0 + 64 + j] in its high nibble, so both nibble planes line up with 64
 * consecutive activations; when K % 128 == 64 the last 64 inputs are 32 bytes,
 * byte j = c[j] | c[j + 32] << 4. Group sizes: 32, 64 or a multiple of 128; K a
 * multiple of 64 and of the group size.
 *
 * Built and loaded at run time by llmref/quant/_w4a8.py (gcc -O3 -fopenmp).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

int llmref_w4a8_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* One block of n activations (n a multiple of 16) to int8 codes and its scale. */
TARGET static void quantize_block(const float *x, int64_t n, int8_t *q, float *scale) {
    __m512 amax = _mm512_setzero_ps();
    __m512 finite = _mm512_setzero_ps(); /* x * 0 is NaN exactly for NaN and +-inf */
    for (int64_t k = 0; k < n; k += 16) {
        __m512 v = _mm512_loadu_ps(x + k);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        finite = _mm512_add_ps(finite, _mm512_mul_ps(v, _mm512_setzero_ps()));
    }
    float a = _mm512_reduce_max_ps(amax);
    int bad = isnan(_mm512_reduce_add_ps(finite));
    if (bad || a == 0.0f) { /* NaN or inf: a NaN scale (NaN out); all zero: zeros */
        for (int64_t k = 0; k < n; ++k) q[k] = 0;
        *scale = bad ? NAN : 0.0f;
        return;
    }
    __m512 r = _mm512_set1_ps(127.0f / a);
    __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
    for (int64_t k = 0; k < n; k += 16) {
        /* cvtps rounds to nearest even under the default MXCSR, like torch.round */
        __m512i c = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), r));
        c = _mm512_min_epi32(_mm512_max_epi32(c, lo), hi);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(c));
    }
    *scale = a / 127.0f;
}

/* Sum of n int8 codes (n a multiple of 16). */
TARGET static int32_t code_sum(const int8_t *q, int64_t n) {
    __m512i total = _mm512_setzero_si512();
    for (int64_t k = 0; k < n; k += 16)
        total = _mm512_add_epi32(total, _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + k))));
    return _mm512_reduce_add_epi32(total);
}

/* Add an integer accumulator to a float one. Lanes 0-7 belong to group a, lanes 8-15 to
 * group b (the same group for a whole vector); `zs` is a group's zero-point term
 * z * sum(xq), subtracted from the first lane of each half (`lanes`) while still an
 * integer, and `sc` its scale ws * xs. */
TARGET static inline __attribute__((always_inline)) __m512 flush(__m512 facc, __m512i acc,
                                                                 __mmask16 lanes, int32_t zsa,
                                                                 int32_t zsb, float sca,
                                                                 float scb) {
    __m512i zs = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(zsa), _mm512_set1_epi32(zsb));
    __m512 sc = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(sca), _mm512_set1_ps(scb));
    __m512i exact = _mm512_mask_sub_epi32(acc, lanes, acc, zs);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), sc, facc);
}

/* The two planes of 64 codes of a 128-input run (64 bytes at p). */
TARGET static inline __attribute__((always_inline)) void planes(const uint8_t *p, __m512i *c0,
                                                                __m512i *c1) {
    const __m512i low4 = _mm512_set1_epi8(0x0F);
    __m512i b = _mm512_loadu_si512((const void *)p);
    *c0 = _mm512_and_si512(b, low4);
    *c1 = _mm512_and_si512(_mm512_srli_epi16(b, 4), low4);
}

/* c . x over 64 codes and activations, into acc. */
TARGET static inline __attribute__((always_inline)) __m512i dot64(__m512i acc, __m512i c,
                                                                  const int8_t *x) {
    return _mm512_dpbusd_epi32(acc, c, _mm512_loadu_si512((const void *)x));
}

/* RB rows of activations against one weight row; RB is a constant at each call site.
 * A 128-input run gives two planes of 64 codes: one group each for g = 64, two halves
 * of 32 (lanes 0-7 and 8-15) each for g = 32, part of one group for g >= 128. A final
 * run of 64 inputs (K % 128 == 64, only with g = 32 or 64) is 32 bytes, planes of 32. */
TARGET static inline __attribute__((always_inline)) void dot_rows(
    const uint8_t *w, const float *ws, const int32_t *wz, const int8_t *xq, const float *xs,
    const int32_t *xsum, int64_t K, int64_t g, const int RB, float *out) {
    const int64_t G = K / g;
    const __m512i zero = _mm512_setzero_si512();
    __m512 facc[4];
    for (int r = 0; r < RB; ++r) facc[r] = _mm512_setzero_ps();
/* flush a vector holding one group gi, or the two groups gi, gi + 1 in its halves */
#define ONE(r, acc, gi)                                                                           \
    facc[r] = flush(facc[r], acc, 0x0001, wz[gi] * xsum[(r) * G + (gi)],                          \
                    wz[gi] * xsum[(r) * G + (gi)], ws[gi] * xs[(r) * G + (gi)],                   \
                    ws[gi] * xs[(r) * G + (gi)])
#define TWO(r, acc, gi)                                                                           \
    facc[r] = flush(facc[r], acc, 0x0101, wz[gi] * xsum[(r) * G + (gi)],                          \
                    wz[(gi) + 1] * xsum[(r) * G + (gi) + 1], ws[gi] * xs[(r) * G + (gi)],         \
                    ws[(gi) + 1] * xs[(r) * G + (gi) + 1])
    if (g >= 128) {
        for (int64_t gi = 0; gi < G; ++gi) {
            __m512i acc[4];
            for (int r = 0; r < RB; ++r) acc[r] = zero;
            for (int64_t k0 = gi * g; k0 < (gi + 1) * g; k0 += 128) {
                __m512i c0, c1;
                planes(w + k0 / 2, &c0, &c1);
                for (int r = 0; r < RB; ++r) {
                    const int8_t *xr = xq + r * K + k0;
                    acc[r] = dot64(dot64(acc[r], c0, xr), c1, xr + 64);
                }
            }
            for (int r = 0; r < RB; ++r) ONE(r, acc[r], gi);
        }
    } else {
        const int64_t full = K / 128 * 128;
        for (int64_t k0 = 0; k0 < full; k0 += 128) {
            __m512i c0, c1;
            planes(w + k0 / 2, &c0, &c1);
            const int64_t gi = k0 / g;
            for (int r = 0; r < RB; ++r) {
                const int8_t *xr = xq + r * K + k0;
                __m512i a0 = dot64(zero, c0, xr), a1 = dot64(zero, c1, xr + 64);
                if (g == 64) {
                    ONE(r, a0, gi);
                    ONE(r, a1, gi + 1);
                } else {
                    TWO(r, a0, gi);
                    TWO(r, a1, gi + 2);
                }
            }
        }
        if (full < K) {
            const __m256i low4h = _mm256_set1_epi8(0x0F);
            __m256i b = _mm256_loadu_si256((const __m256i *)(w + full / 2));
            __m256i c0 = _mm256_and_si256(b, low4h);
            __m256i c1 = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4h);
            const int64_t gi = full / g;
            for (int r = 0; r < RB; ++r) {
                const int8_t *xr = xq + r * K + full;
                __m256i a0 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c0,
                                                 _mm256_loadu_si256((const __m256i *)xr));
                __m256i a1 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c1,
                                                 _mm256_loadu_si256((const __m256i *)(xr + 32)));
                if (g == 64) {
                    ONE(r, _mm512_zextsi256_si512(_mm256_add_epi32(a0, a1)), gi);
                } else {
                    ONE(r, _mm512_zextsi256_si512(a0), gi);
                    ONE(r, _mm512_zextsi256_si512(a1), gi + 1);
                }
            }
        }
    }
#undef ONE
#undef TWO
    for (int r = 0; r < RB; ++r) out[r] = _mm512_reduce_add_ps(facc[r]);
}

/* y (M, N) = W4A8 product of x (M, K) float32 with the packed weight; 0 on success. */
TARGET int llmref_w4a8_linear(const float *x, const uint8_t *packed, const float *ws,
                              const int32_t *wz, float *y, int64_t M, int64_t N, int64_t K,
                              int64_t g, int64_t ablock, int nthreads) {
    if (g <= 0 || (g % 128 && g != 32 && g != 64) || K % 64 || K % g || ablock <= 0 ||
        ablock % g || K % ablock)
        return 1;
    const int64_t G = K / g, A = K / ablock;
    int8_t *xq = aligned_alloc(64, ((M * K + 63) / 64) * 64);
    float *xa = malloc(sizeof(float) * M * A);  /* one scale per activation block */
    float *xs = malloc(sizeof(float) * M * G);  /* the same, per weight group */
    int32_t *xsum = malloc(sizeof(int32_t) * M * G);
    if (!xq || !xa || !xs || !xsum) {
        free(xq), free(xa), free(xs), free(xsum);
        return 2;
    }
#pragma omp parallel for num_threads(nthreads) schedule(static) if (M * K >= 65536)
    for (int64_t i = 0; i < M * A; ++i)
        quantize_block(x + i * ablock, ablock, xq + i * ablock, xa + i);
#pragma omp parallel for num_threads(nthreads) schedule(static) if (M * K >= 65536)
    for (int64_t i = 0; i < M * G; ++i) {
        xs[i] = xa[(i / G) * A + (i % G) * g / ablock];
        xsum[i] = code_sum(xq + i * g, g);
    }

#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += 16) {
        const int64_t n1 = n0 + 16 < N ? n0 + 16 : N;
        float out[4];
        int64_t m = 0;
        for (; m + 4 <= M; m += 4)
            for (int64_t n = n0; n < n1; ++n) {
                dot_rows(packed + n * (K / 2), ws + n * G, wz + n * G, xq + m * K, xs + m * G,
                         xsum + m * G, K, g, 4, out);
                for (int r = 0; r < 4; ++r) y[(m + r) * N + n] = out[r];
            }
        for (; m < M; ++m)
            for (int64_t n = n0; n < n1; ++n) {
                dot_rows(packed + n * (K / 2), ws + n * G, wz + n * G, xq + m * K, xs + m * G,
                         xsum + m * G, K, g, 1, out);
                y[m * N + n] = out[0];
            }
    }
    free(xq), free(xa), free(xs), free(xsum);
    return 0;
}
