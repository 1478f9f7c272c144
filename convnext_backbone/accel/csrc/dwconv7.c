/* Depthwise 7x7 convolution (stride 1, padding 3) on NHWC float32 or bfloat16, the ConvNeXt block's dwconv.
 *
 * Why this exists: on CPU, oneDNN's depthwise weight gradient runs at ~1/7 of its forward
 * speed and is a fifth of a ConvNeXt training step. The weight gradient is a per-channel
 * correlation reduced over the whole image; here it is computed with seven vector
 * accumulators held in registers along each image row, at forward-like speed. The forward
 * (also the input gradient, with the kernel flipped) keeps TILE output columns in registers,
 * and each input vector of a kernel row is loaded once for all seven taps.
 *
 * Plain C with GCC/Clang vector extensions: 8 channels per vector (16 where the compiler targets
 * AVX-512 and 16 channels remain), so C must be a multiple of 8. Every function works on a range
 * of rows [r0, r1) of the N*H rows, so callers split the work across threads; no function
 * allocates, no global state.
 *
 * bfloat16 (the *_bf16 functions): tensors are stored as uint16 bit patterns (gcc 12 has no
 * bf16 arithmetic type), widened to float32 exactly (a 16-bit shift) and summed in float32;
 * results are rounded to bfloat16 to nearest even: with the AVX512-BF16 instruction where the
 * compiler targets it (as oneDNN does: denormal results flush to zero), otherwise in integer
 * arithmetic exactly as torch's .to(torch.bfloat16) (NaN stays a quiet NaN). Weights, biases
 * and LayerNorm parameters come in float32 (a bfloat16 model's are converted exactly). Each
 * bfloat16 result is rounded where the reference rounds it: the conv output before the fused
 * LayerNorm reads it, the LayerNorm output once.
 */
#include <stddef.h>
#include <stdint.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512VL__)
#define HAVE_BF16_INSN 1
#endif

#define K 7
#define PAD 3
#define TILE 8

typedef uint16_t bf16;

/* Vector types of L float32 lanes (vf), L bfloat16 (vh) and L uint32 (vu). */
#define DEFINE_VECTORS(L)                                                        \
    typedef float vf##L __attribute__((vector_size(4 * L), aligned(4)));        \
    typedef uint16_t vh##L __attribute__((vector_size(2 * L), aligned(2)));     \
    typedef uint32_t vu##L __attribute__((vector_size(4 * L)));                 \
    static inline vf##L ld_f32_##L(const float *p) { return *(const vf##L *)p; } \
    static inline void st_f32_##L(float *p, vf##L v) { *(vf##L *)p = v; }       \
    /* bfloat16 -> float32 is exact: the 16 bits become the high half */        \
    static inline vf##L ld_bf16_##L(const bf16 *p) {                            \
        return (vf##L)(__builtin_convertvector(*(const vh##L *)p, vu##L) << 16); \
    }                                                                            \
    /* float32 -> bfloat16, round to nearest even, NaN -> quiet NaN (torch's rule) */ \
    static inline vh##L round_bf16_int_##L(vf##L v) {                            \
        vu##L u = (vu##L)v;                                                      \
        vu##L r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;                        \
        vu##L nan = (vu##L)(v != v);                                             \
        return __builtin_convertvector((r & ~nan) | (0x7fc0u & nan), vh##L);     \
    }
DEFINE_VECTORS(8)
DEFINE_VECTORS(16)

#ifdef __AVX512F__
/* One instruction each way (GCC tuned for 256-bit vectors would split the generic widening in two). */
static inline vf16 ld_bf16_16_avx512(const bf16 *p) {
    return (vf16)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16);
}
#define ld_bf16_16 ld_bf16_16_avx512
#endif

static inline void st_bf16_8(bf16 *p, vf8 v) {
#ifdef HAVE_BF16_INSN
    *(vh8 *)p = (vh8)_mm256_cvtneps_pbh((__m256)v);
#else
    *(vh8 *)p = round_bf16_int_8(v);
#endif
}

static inline void st_bf16_16(bf16 *p, vf16 v) {
#ifdef HAVE_BF16_INSN
    *(vh16 *)p = (vh16)_mm512_cvtneps_pbh((__m512)v);
#else
    *(vh16 *)p = round_bf16_int_16(v);
#endif
}

/* 16-channel vectors where AVX-512 has the registers for them (8 accumulators + 14 inputs);
 * elsewhere they would spill, so every channel goes 8 at a time. */
#ifdef __AVX512F__
#define WIDE 16
#else
#define WIDE 8
#endif

/* The instruction set this library was compiled for (what native.kernel_isa() reports). */
const char *kernel_isa(void) {
#if defined(HAVE_BF16_INSN)
    return "avx512bf16";
#elif defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__) && defined(__FMA__)
    return "avx2";
#elif defined(__x86_64__)
    return "x86-64";
#elif defined(__aarch64__)
    return "aarch64";
#else
    return "generic";
#endif
}

/* dst[i] = bfloat16(src[i]) for i < n (n % 8 == 0): the kernels' rounding, for tests. */
void round_to_bf16(const float *src, bf16 *dst, long n) {
    for (long i = 0; i < n; i += 8) st_bf16_8(dst + i, ld_f32_8(src + i));
}

/* ---------------------------------------------------------------------------------------------
 * The kernels, once per storage type T (float / bf16, suffix S: f32 / bf16) and vector width L.
 * ------------------------------------------------------------------------------------------- */

/* TILE output columns starting at w0 of row (n, h), channels [c0, c1) in steps of L; `interior`
 * means no column check is needed. Sums in the order bias, then kernel row i, then column j. */
#define DEFINE_FORWARD_TILE(T, S, L)                                                               \
    static inline void forward_tile_##S##_##L(const T *x, const float *wt, const float *bias, T *y,  \
                                             long n, long h, long yr, long H, long W, long C,       \
                                             long c0, long c1, long w0, int interior) {             \
        for (long cb = c0; cb < c1; cb += L) {                                                     \
            vf##L acc[TILE];                                                                       \
            vf##L b = bias ? ld_f32_##L(bias + cb) : (vf##L){0};                                   \
            for (int t = 0; t < TILE; ++t) acc[t] = b;                                             \
            for (int i = 0; i < K; ++i) {                                                          \
                long hx = h + i - PAD;                                                             \
                if (hx < 0 || hx >= H) continue;                                                   \
                const T *xrow = x + (n * H + hx) * W * C + cb;                                     \
                vf##L xs[TILE + K - 1]; /* the input columns w0-3 .. w0+TILE+2, zero outside */    \
                for (int p = 0; p < TILE + K - 1; ++p) {                                           \
                    long wx = w0 + p - PAD;                                                        \
                    xs[p] = (interior || (wx >= 0 && wx < W)) ? ld_##S##_##L(xrow + wx * C) : (vf##L){0}; \
                }                                                                                  \
                for (int j = 0; j < K; ++j) {                                                      \
                    vf##L wv = ld_f32_##L(wt + (i * K + j) * C + cb);                              \
                    for (int t = 0; t < TILE; ++t) acc[t] += wv * xs[t + j];                       \
                }                                                                                  \
            }                                                                                      \
            T *yp = y + (yr * W + w0) * C + cb;                                                    \
            for (int t = 0; t < TILE; ++t)                                                         \
                if (w0 + t < W) st_##S##_##L(yp + t * C, acc[t]);                                  \
        }                                                                                          \
    }

/* acc[(i*7+j)*C + c] += sum over w of g[r,w,c] * x[n, h+i-3, w+j-3, c] for one kernel row i and
 * channels [cb, cb + L): seven accumulators in registers, the inputs in a sliding window. */
#define DEFINE_GRAD_WEIGHT_ROW(T, S, L)                                                            \
    static inline void grad_weight_row_##S##_##L(const T *xrow, const T *grow, float *acc, int i,    \
                                                long W, long C, long cb) {                          \
        vf##L a[K], xs[K];                                                                         \
        for (int j = 0; j < K; ++j) a[j] = (vf##L){0};                                             \
        for (int j = 0; j < K - 1; ++j) {                                                          \
            long wx = j - PAD;                                                                     \
            xs[j + 1] = (wx >= 0 && wx < W) ? ld_##S##_##L(xrow + wx * C + cb) : (vf##L){0};       \
        }                                                                                          \
        for (long w = 0; w < W; ++w) {                                                             \
            for (int j = 0; j < K - 1; ++j) xs[j] = xs[j + 1];                                     \
            xs[K - 1] = w + PAD < W ? ld_##S##_##L(xrow + (w + PAD) * C + cb) : (vf##L){0};        \
            vf##L gv = ld_##S##_##L(grow + w * C + cb);                                            \
            for (int j = 0; j < K; ++j) a[j] += gv * xs[j];                                        \
        }                                                                                          \
        for (int j = 0; j < K; ++j) {                                                              \
            float *p = acc + (i * K + j) * C + cb;                                                 \
            st_f32_##L(p, ld_f32_##L(p) + a[j]);                                                   \
        }                                                                                          \
    }

/* The exported functions of one storage type; channels go WIDE at a time, the rest 8 at a time. */
#define DEFINE_KERNELS(T, S, SUFFIX)                                                               \
    DEFINE_FORWARD_TILE(T, S, 8)                                                                   \
    DEFINE_FORWARD_TILE(T, S, 16)                                                                  \
    DEFINE_GRAD_WEIGHT_ROW(T, S, 8)                                                                \
    DEFINE_GRAD_WEIGHT_ROW(T, S, 16)                                                               \
                                                                                                   \
    static inline void forward_tile_##S(const T *x, const float *wt, const float *bias, T *y,       \
                                        long n, long h, long yr, long H, long W, long C, long w0,  \
                                        int interior) {                                            \
        long cw = WIDE == 16 ? C - C % 16 : 0;                                                     \
        if (cw) forward_tile_##S##_16(x, wt, bias, y, n, h, yr, H, W, C, 0, cw, w0, interior);     \
        if (cw < C) forward_tile_##S##_8(x, wt, bias, y, n, h, yr, H, W, C, cw, C, w0, interior);  \
    }                                                                                              \
                                                                                                   \
    /* LayerNorm over the C channels of each of the tile's pixels, in place while they are in      \
     * cache: float32 statistics (mean, then the mean of squared deviations), the tile's pixels     \
     * side by side so that their reductions overlap. */                                           \
    static inline void layer_norm_tile_##S(T *y, const float *ln_w, const float *ln_b, float eps,  \
                                           long yr, long W, long C, long w0) {                     \
        int nt = W - w0 < TILE ? (int)(W - w0) : TILE;                                             \
        T *p = y + (yr * W + w0) * C;                                                              \
        vf8 s[TILE], q[TILE], m[TILE], r[TILE];                                                    \
        for (int t = 0; t < TILE; ++t) s[t] = q[t] = (vf8){0};                                     \
        for (long cb = 0; cb < C; cb += 8)                                                         \
            for (int t = 0; t < nt; ++t) s[t] += ld_##S##_8(p + t * C + cb);                       \
        for (int t = 0; t < nt; ++t) {                                                             \
            float mean = 0.f;                                                                      \
            for (int k = 0; k < 8; ++k) mean += s[t][k];                                           \
            m[t] = mean / (float)C - (vf8){0};                                                     \
        }                                                                                          \
        for (long cb = 0; cb < C; cb += 8)                                                         \
            for (int t = 0; t < nt; ++t) { vf8 d = ld_##S##_8(p + t * C + cb) - m[t]; q[t] += d * d; } \
        for (int t = 0; t < nt; ++t) {                                                             \
            float var = 0.f;                                                                       \
            for (int k = 0; k < 8; ++k) var += q[t][k];                                            \
            r[t] = 1.0f / __builtin_sqrtf(var / (float)C + eps) - (vf8){0};                        \
        }                                                                                          \
        for (long cb = 0; cb < C; cb += 8) {                                                       \
            vf8 lw = ld_f32_8(ln_w + cb), lb = ld_f32_8(ln_b + cb);                                \
            for (int t = 0; t < nt; ++t)                                                           \
                st_##S##_8(p + t * C + cb, (ld_##S##_8(p + t * C + cb) - m[t]) * r[t] * lw + lb);  \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* y[n,h,w,c] = bias[c] + sum_ij wt[(i*7+j)*C + c] * x[n, h+i-3, w+j-3, c]; bias may be NULL.   \
     * With ln_w/ln_b (not NULL), y is then layer-normalised over c (the block's LayerNorm, fused). \
     * Row r = n*H + h of the output goes to row r - y_row0 of y, so y may hold just rows           \
     * [y_row0, ...): the inference path streams a block over chunks of rows. */                   \
    void dwconv7_forward##SUFFIX(const T *x, const float *wt, const float *bias, T *y,             \
                                 const float *ln_w, const float *ln_b, float eps,                  \
                                 long N, long H, long W, long C, long r0, long r1, long y_row0) {  \
        (void)N;                                                                                   \
        for (long r = r0; r < r1; ++r) {                                                           \
            long n = r / H, h = r % H, yr = r - y_row0;                                            \
            for (long w0 = 0; w0 < W; w0 += TILE) {                                                \
                if (w0 >= PAD && w0 + TILE - 1 + PAD < W)                                          \
                    forward_tile_##S(x, wt, bias, y, n, h, yr, H, W, C, w0, 1);                    \
                else                                                                               \
                    forward_tile_##S(x, wt, bias, y, n, h, yr, H, W, C, w0, 0);                    \
                if (ln_w) layer_norm_tile_##S(y, ln_w, ln_b, eps, yr, W, C, w0);                   \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* acc[(i*7+j)*C + c] += sum over rows [r0, r1) and w of g[n,h,w,c] * x[n, h+i-3, w+j-3, c]. */ \
    void dwconv7_grad_weight##SUFFIX(const T *x, const T *g, float *acc,                           \
                                     long N, long H, long W, long C, long r0, long r1) {           \
        (void)N;                                                                                   \
        long cw = WIDE == 16 ? C - C % 16 : 0;                                                     \
        for (long r = r0; r < r1; ++r) {                                                           \
            long n = r / H, h = r % H;                                                             \
            const T *grow = g + r * W * C;                                                         \
            for (int i = 0; i < K; ++i) {                                                          \
                long hx = h + i - PAD;                                                             \
                if (hx < 0 || hx >= H) continue;                                                   \
                const T *xrow = x + (n * H + hx) * W * C;                                          \
                for (long cb = 0; cb < cw; cb += 16) grad_weight_row_##S##_16(xrow, grow, acc, i, W, C, cb); \
                for (long cb = cw; cb < C; cb += 8) grad_weight_row_##S##_8(xrow, grow, acc, i, W, C, cb); \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    /* acc[n*C + c] += sum over rows l in [r0, r1) of a[n, l, c]^2 (a is (N, L, C)); rows are global \
     * indices n*L + l, read once each, in order. Sums go in blocks of 256 rows (a block's partial  \
     * sums stay in `part`, in cache), so float32 error stays ~(256 + L/256) ulp. GRN's statistic:  \
     * one pass, no temporary (torch would materialise a*a first). C <= 4096. */                   \
    void sum_of_squares_rows##SUFFIX(const T *a, float *acc, long L, long C, long r0, long r1) {   \
        float part[4096] __attribute__((aligned(32)));                                             \
        for (long r = r0; r < r1;) {                                                               \
            long n = r / L, end = (n + 1) * L < r1 ? (n + 1) * L : r1;                             \
            float *out = acc + n * C;                                                              \
            for (long b = r; b < end; b += 256) {                                                  \
                long stop = b + 256 < end ? b + 256 : end;                                         \
                for (long cb = 0; cb < C; cb += 8) st_f32_8(part + cb, (vf8){0});                  \
                for (long l = b; l < stop; ++l) {                                                  \
                    const T *row = a + l * C;                                                      \
                    for (long cb = 0; cb < C; cb += 8) {                                           \
                        vf8 u = ld_##S##_8(row + cb);                                              \
                        st_f32_8(part + cb, ld_f32_8(part + cb) + u * u);                          \
                    }                                                                              \
                }                                                                                  \
                for (long cb = 0; cb < C; cb += 8) st_f32_8(out + cb, ld_f32_8(out + cb) + ld_f32_8(part + cb)); \
            }                                                                                      \
            r = end;                                                                               \
        }                                                                                          \
    }

DEFINE_KERNELS(float, f32, )
DEFINE_KERNELS(bf16, bf16, _bf16)

/* ---------------------------------------------------------------------------------------------
 * The first projection's epilogue: h = GELU(h + bias) in place, for a GEMM computed without its
 * bias (torch's addmm would first copy the bias into every output row). GELU with erf as a rational function on [-4, 4]
 * (Eigen's, as TensorFlow's GELU; erf is +-1 in float32 beyond), |GELU error| < 1.4e-6 as torch's
 * own CPU GELU (1.2e-6); or the tanh approximation, with exp (Cephes' expf).
 * With acc (not NULL), also acc[c] += (the stored result)^2: GRN's statistic in the same pass.
 * ------------------------------------------------------------------------------------------- */
#define DEFINE_GELU(L)                                                                             \
    static inline vf##L splat_##L(float v) { return v - (vf##L){0}; }                              \
    /* m ? a : b for a comparison mask m (GCC's C has no vector ?:) */                             \
    static inline vf##L select_##L(vi##L m, vf##L a, vf##L b) { return (vf##L)(((vi##L)a & m) | ((vi##L)b & ~m)); } \
    static inline vf##L vmin_##L(vf##L a, vf##L b) { return select_##L(a < b, a, b); }             \
    static inline vf##L vmax_##L(vf##L a, vf##L b) { return select_##L(a > b, a, b); }             \
    /* exp(x) to ~1 ulp for x in [-87.3, 88.3] (Cephes' expf); clamped outside */                  \
    static inline vf##L exp_##L(vf##L x) {                                                         \
        x = vmax_##L(vmin_##L(x, splat_##L(88.3762626647949f)), splat_##L(-87.3f));                \
        vf##L fx = x * 1.44269504088896341f + 0.5f;                                                \
        vf##L n = __builtin_convertvector(__builtin_convertvector(fx, vi##L), vf##L);              \
        n = select_##L(n > fx, n - 1.0f, n); /* floor */                                                    \
        x = x - n * 0.693359375f - n * -2.12194440e-4f;                                            \
        vf##L z = x * x;                                                                           \
        vf##L y = splat_##L(1.9875691500e-4f);                                                     \
        y = y * x + 1.3981999507e-3f;                                                              \
        y = y * x + 8.3334519073e-3f;                                                              \
        y = y * x + 4.1665795894e-2f;                                                              \
        y = y * x + 1.6666665459e-1f;                                                              \
        y = y * x + 5.0000001201e-1f;                                                              \
        y = y * z + x + 1.0f;                                                                      \
        vi##L e = (__builtin_convertvector(n, vi##L) + 127) << 23;                                 \
        return y * (vf##L)e;                                                                       \
    }                                                                                              \
    static inline vf##L gelu_##L(vf##L x, int approximate) {                                       \
        if (approximate) { /* 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */                   \
            vf##L inner = 0.7978845608028654f * (x + 0.044715f * (x * x * x));                     \
            inner = vmax_##L(vmin_##L(inner, splat_##L(9.0f)), splat_##L(-9.0f));                  \
            vf##L th = 1.0f - 2.0f / (exp_##L(2.0f * inner) + 1.0f);                               \
            return 0.5f * x * (1.0f + th);                                                         \
        }                                                                                          \
        vf##L u = x * 0.70710678118654752f; /* the rational is used on [-4, 4] only: masked below */ \
        vf##L u2 = u * u;                                                                          \
        vf##L p = splat_##L(-2.72614225801306e-10f);                                               \
        p = p * u2 + 2.77068142495902e-08f;                                                        \
        p = p * u2 - 2.10102402082508e-06f;                                                        \
        p = p * u2 - 5.69250639462346e-05f;                                                        \
        p = p * u2 - 7.34990630326855e-04f;                                                        \
        p = p * u2 - 2.95459980854025e-03f;                                                        \
        p = p * u2 - 1.60960333262415e-02f;                                                        \
        vf##L q = splat_##L(-1.45660718464996e-05f);                                               \
        q = q * u2 - 2.13374055278905e-04f;                                                        \
        q = q * u2 - 1.68282697438203e-03f;                                                        \
        q = q * u2 - 7.37332916720468e-03f;                                                        \
        q = q * u2 - 1.42647390514189e-02f;                                                        \
        vf##L erf = u * p / q;                                                                     \
        erf = select_##L(u > 4.0f, splat_##L(1.0f), select_##L(u < -4.0f, splat_##L(-1.0f), erf)); \
        return x * 0.5f * (1.0f + erf);                                                            \
    }

typedef int32_t vi8 __attribute__((vector_size(32)));
typedef int32_t vi16 __attribute__((vector_size(64)));
DEFINE_GELU(8)
#ifndef __AVX512F__
DEFINE_GELU(16)
#else
/* The same functions for 16 lanes in AVX-512 instructions: min/max, rounding, 2^n (scalef) and a
 * reciprocal refined by one Newton step are single instructions there. */
static inline vf16 exp_16(vf16 v) {
    __m512 x = _mm512_max_ps(_mm512_min_ps((__m512)v, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    return (vf16)_mm512_scalef_ps(y, n);
}

static inline __m512 recip_16(__m512 d) {  /* 1/d to ~1 ulp: 14-bit estimate, one Newton step */
    __m512 t = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
}

static inline vf16 gelu_16(vf16 v, int approximate) {
    __m512 x = (__m512)v, half_x = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
    if (approximate) {
        __m512 inner = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), _mm512_mul_ps(_mm512_mul_ps(x, x), x), x));
        inner = _mm512_max_ps(_mm512_min_ps(inner, _mm512_set1_ps(9.0f)), _mm512_set1_ps(-9.0f));
        __m512 e = (__m512)exp_16((vf16)_mm512_add_ps(inner, inner));  /* tanh = 1 - 2 / (e^2y + 1) */
        __m512 th = _mm512_fnmadd_ps(_mm512_set1_ps(2.0f), recip_16(_mm512_add_ps(e, _mm512_set1_ps(1.0f))), _mm512_set1_ps(1.0f));
        return (vf16)_mm512_mul_ps(half_x, _mm512_add_ps(th, _mm512_set1_ps(1.0f)));
    }
    __m512 u = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));  /* [-4, 4] only: masked below */
    __m512 u2 = _mm512_mul_ps(u, u);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(-2.72614225801306e-10f), u2, _mm512_set1_ps(2.77068142495902e-08f));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-2.10102402082508e-06f));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-5.69250639462346e-05f));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-7.34990630326855e-04f));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-2.95459980854025e-03f));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(-1.60960333262415e-02f));
    __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(-1.45660718464996e-05f), u2, _mm512_set1_ps(-2.13374055278905e-04f));
    q = _mm512_fmadd_ps(q, u2, _mm512_set1_ps(-1.68282697438203e-03f));
    q = _mm512_fmadd_ps(q, u2, _mm512_set1_ps(-7.37332916720468e-03f));
    q = _mm512_fmadd_ps(q, u2, _mm512_set1_ps(-1.42647390514189e-02f));
    __m512 erf = _mm512_mul_ps(_mm512_mul_ps(u, p), recip_16(q));
    /* beyond +-4, erf is +-1 in float32: exactly so (GELU(x) = x, GELU(-x) = -0 for large x) */
    erf = _mm512_mask_mov_ps(erf, _mm512_cmp_ps_mask(u, _mm512_set1_ps(4.0f), _CMP_GT_OQ), _mm512_set1_ps(1.0f));
    erf = _mm512_mask_mov_ps(erf, _mm512_cmp_ps_mask(u, _mm512_set1_ps(-4.0f), _CMP_LT_OQ), _mm512_set1_ps(-1.0f));
    return (vf16)_mm512_mul_ps(half_x, _mm512_add_ps(erf, _mm512_set1_ps(1.0f)));
}
#endif

#define DEFINE_BIAS_GELU_COLS(T, S, L)                                                             \
    /* one row's columns [c0, c1); `approximate` and `sq` are constants where this is inlined */    \
    static inline __attribute__((always_inline)) void bias_gelu_cols_##S##_##L(                     \
            T *row, const float *bias, float *part, long c0, long c1, int approximate, int sq) {   \
        for (long c = c0; c < c1; c += L) {                                                        \
            vf##L v = gelu_##L(ld_##S##_##L(row + c) + ld_f32_##L(bias + c), approximate);         \
            st_##S##_##L(row + c, v);                                                              \
            if (sq) { v = ld_##S##_##L(row + c); st_f32_##L(part + c, ld_f32_##L(part + c) + v * v); } \
        }                                                                                          \
    }

#define DEFINE_BIAS_GELU(T, S, SUFFIX)                                                             \
    DEFINE_BIAS_GELU_COLS(T, S, 8)                                                                 \
    DEFINE_BIAS_GELU_COLS(T, S, 16)                                                                \
    static inline __attribute__((always_inline)) void bias_gelu_row_##S(                            \
            T *row, const float *bias, float *part, long C, int approximate, int sq) {             \
        long cw = WIDE == 16 ? C - C % 16 : 0;                                                     \
        if (cw) bias_gelu_cols_##S##_16(row, bias, part, 0, cw, approximate, sq);                  \
        if (cw < C) bias_gelu_cols_##S##_8(row, bias, part, cw, C, approximate, sq);               \
    }                                                                                              \
    /* Rows [r0, r1) of the (rows, C) tensor h; acc (C floats) or NULL. C <= 4096. */              \
    void bias_gelu_rows##SUFFIX(T *h, const float *bias, float *acc, long C, long approximate,      \
                                long r0, long r1) {                                                \
        float part[4096] __attribute__((aligned(64)));                                             \
        for (long b = r0; b < r1; b += 256) { /* sums in blocks of 256 rows, as sum_of_squares */  \
            long stop = b + 256 < r1 ? b + 256 : r1;                                               \
            if (acc) for (long c = 0; c < C; c += 8) st_f32_8(part + c, (vf8){0});                 \
            for (long r = b; r < stop; ++r) {                                                      \
                T *row = h + r * C;                                                                \
                if (acc) {                                                                         \
                    if (approximate) bias_gelu_row_##S(row, bias, part, C, 1, 1);                  \
                    else bias_gelu_row_##S(row, bias, part, C, 0, 1);                              \
                } else {                                                                           \
                    if (approximate) bias_gelu_row_##S(row, bias, part, C, 1, 0);                  \
                    else bias_gelu_row_##S(row, bias, part, C, 0, 0);                              \
                }                                                                                  \
            }                                                                                      \
            if (acc) for (long c = 0; c < C; c += 8) st_f32_8(acc + c, ld_f32_8(acc + c) + ld_f32_8(part + c)); \
        }                                                                                          \
    }

DEFINE_BIAS_GELU(float, f32, )
DEFINE_BIAS_GELU(bf16, bf16, _bf16)

/* ---------------------------------------------------------------------------------------------
 * The second projection's epilogue: out = x + (branch + bias) for a GEMM computed without its
 * bias, summed in float32 and rounded once (the residual stream of a bfloat16 block).
 * ------------------------------------------------------------------------------------------- */
#define DEFINE_RESIDUAL(T, S, SUFFIX)                                                              \
    void residual_rows##SUFFIX(const T *x, const T *branch, const float *bias, T *out, long C,     \
                               long r0, long r1) {                                                 \
        long cw = WIDE == 16 ? C - C % 16 : 0;                                                     \
        for (long r = r0; r < r1; ++r) {                                                           \
            const T *xr = x + r * C, *br = branch + r * C;                                         \
            T *o = out + r * C;                                                                    \
            for (long c = 0; c < cw; c += 16)                                                      \
                st_##S##_16(o + c, ld_##S##_16(xr + c) + (ld_##S##_16(br + c) + ld_f32_16(bias + c))); \
            for (long c = cw; c < C; c += 8)                                                       \
                st_##S##_8(o + c, ld_##S##_8(xr + c) + (ld_##S##_8(br + c) + ld_f32_8(bias + c))); \
        }                                                                                          \
    }

DEFINE_RESIDUAL(float, f32, )
DEFINE_RESIDUAL(bf16, bf16, _bf16)

/* out[r, j] = w[r, j] * rs[r] * cs[j] (rs or cs may be NULL), in float32, rounded once: a weight
 * with GRN's per-sample scale or the layer scale folded in, without float32 temporaries. */
#define DEFINE_SCALE(T, S, SUFFIX)                                                                 \
    void scale_rows##SUFFIX(const T *w, const float *rs, const float *cs, T *out, long cols, long r0, long r1) { \
        for (long r = r0; r < r1; ++r) {                                                           \
            const T *wr = w + r * cols;                                                               \
            T *o = out + r * cols;                                                                    \
            float f = rs ? rs[r] : 1.0f;                                                           \
            for (long j = 0; j < cols; j += 8) {                                                      \
                vf8 v = ld_##S##_8(wr + j);                                                        \
                if (rs) v = v * f;                                                                 \
                if (cs) v = v * ld_f32_8(cs + j);                                                  \
                st_##S##_8(o + j, v);                                                              \
            }                                                                                      \
        }                                                                                          \
    }

DEFINE_SCALE(float, f32, )
DEFINE_SCALE(bf16, bf16, _bf16)

/* ---------------------------------------------------------------------------------------------
 * Threads: each *_par function runs its serial function on `parts` ranges of the rows [r0, r1),
 * in the host process's OpenMP runtime (torch's libgomp, whose GOMP_parallel and thread queries
 * the loader hands over with set_openmp; the library itself links no OpenMP). Its threads are the
 * ones torch's own ops just used, still spinning: work handed to other threads would compete
 * with them for the cores. Without a runtime (or with parts == 1) the ranges run here, in turn.
 * A reduction gives thread k the accumulator acc + k * acc_stride.
 * ------------------------------------------------------------------------------------------- */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
static gomp_parallel_fn gomp_parallel;
static int (*omp_thread_num)(void);
static int (*omp_num_threads)(void);

void set_openmp(void *parallel, void *thread_num, void *num_threads) {
    gomp_parallel = (gomp_parallel_fn)parallel;
    omp_thread_num = (int (*)(void))thread_num;
    omp_num_threads = (int (*)(void))num_threads;
}

struct task {
    void (*body)(const struct task *t, long r0, long r1, long k);
    const void *p[5];
    long l[6];
    float f;
    float *acc;
    long acc_stride, r0, r1, parts;
};

static void task_range(const struct task *t, long k, long n) {
    long r0 = t->r0 + (t->r1 - t->r0) * k / n, r1 = t->r0 + (t->r1 - t->r0) * (k + 1) / n;
    if (r1 > r0) t->body(t, r0, r1, k);
}

static void task_worker(void *arg) { task_range((const struct task *)arg, omp_thread_num(), omp_num_threads()); }

static void run_task(struct task *t) {
    if (t->parts > 1 && gomp_parallel && t->r1 - t->r0 > 1)
        gomp_parallel(task_worker, t, (unsigned)t->parts, 0);
    else
        for (long k = 0; k < t->parts; ++k) task_range(t, k, t->parts);
}

#define DEFINE_PARALLEL(T, SUFFIX)                                                                 \
    static void forward_body##SUFFIX(const struct task *t, long r0, long r1, long k) {             \
        (void)k;                                                                                   \
        dwconv7_forward##SUFFIX((const T *)t->p[0], (const float *)t->p[1], (const float *)t->p[2], \
                                (T *)t->acc, (const float *)t->p[3], (const float *)t->p[4], t->f,  \
                                t->l[0], t->l[1], t->l[2], t->l[3], r0, r1, t->l[4]);              \
    }                                                                                              \
    void dwconv7_forward_par##SUFFIX(const T *x, const float *wt, const float *bias, T *y,          \
                                     const float *ln_w, const float *ln_b, float eps, long N,      \
                                     long H, long W, long C, long r0, long r1, long y_row0,        \
                                     long parts) {                                                 \
        struct task t = {forward_body##SUFFIX, {x, wt, bias, ln_w, ln_b}, {N, H, W, C, y_row0, 0},  \
                         eps, (float *)y, 0, r0, r1, parts};                                       \
        run_task(&t);                                                                              \
    }                                                                                              \
    static void grad_weight_body##SUFFIX(const struct task *t, long r0, long r1, long k) {         \
        dwconv7_grad_weight##SUFFIX((const T *)t->p[0], (const T *)t->p[1], t->acc + k * t->acc_stride, \
                                    t->l[0], t->l[1], t->l[2], t->l[3], r0, r1);                   \
    }                                                                                              \
    void dwconv7_grad_weight_par##SUFFIX(const T *x, const T *g, float *acc, long N, long H, long W, \
                                         long C, long r0, long r1, long acc_stride, long parts) {  \
        struct task t = {grad_weight_body##SUFFIX, {x, g, 0, 0, 0}, {N, H, W, C, 0, 0}, 0.f, acc,     \
                         acc_stride, r0, r1, parts};                                               \
        run_task(&t);                                                                              \
    }                                                                                              \
    static void sum_of_squares_body##SUFFIX(const struct task *t, long r0, long r1, long k) {      \
        sum_of_squares_rows##SUFFIX((const T *)t->p[0], t->acc + k * t->acc_stride, t->l[0], t->l[1], r0, r1); \
    }                                                                                              \
    void sum_of_squares_rows_par##SUFFIX(const T *a, float *acc, long L, long C, long r0, long r1,  \
                                         long acc_stride, long parts) {                            \
        struct task t = {sum_of_squares_body##SUFFIX, {a, 0, 0, 0, 0}, {L, C, 0, 0, 0, 0}, 0.f, acc,  \
                         acc_stride, r0, r1, parts};                                               \
        run_task(&t);                                                                              \
    }                                                                                              \
    static void bias_gelu_body##SUFFIX(const struct task *t, long r0, long r1, long k) {           \
        bias_gelu_rows##SUFFIX((T *)t->p[0], (const float *)t->p[1], t->acc ? t->acc + k * t->acc_stride : 0, \
                               t->l[0], t->l[1], r0, r1);                                          \
    }                                                                                              \
    void bias_gelu_rows_par##SUFFIX(T *h, const float *bias, float *acc, long C, long approximate,  \
                                    long r0, long r1, long acc_stride, long parts) {               \
        struct task t = {bias_gelu_body##SUFFIX, {h, bias, 0, 0, 0}, {C, approximate, 0, 0, 0, 0}, 0.f, \
                         acc, acc_stride, r0, r1, parts};                                          \
        run_task(&t);                                                                              \
    }                                                                                              \
    static void residual_body##SUFFIX(const struct task *t, long r0, long r1, long k) {            \
        (void)k;                                                                                   \
        residual_rows##SUFFIX((const T *)t->p[0], (const T *)t->p[1], (const float *)t->p[2], (T *)t->acc, \
                              t->l[0], r0, r1);                                                    \
    }                                                                                              \
    void residual_rows_par##SUFFIX(const T *x, const T *branch, const float *bias, T *out, long C,  \
                                   long r0, long r1, long parts) {                                 \
        struct task t = {residual_body##SUFFIX, {x, branch, bias, 0, 0}, {C, 0, 0, 0, 0, 0}, 0.f,  \
                         (float *)out, 0, r0, r1, parts};                                          \
        run_task(&t);                                                                              \
    }                                                                                              \
    static void scale_body##SUFFIX(const struct task *t, long r0, long r1, long k) {               \
        (void)k;                                                                                   \
        scale_rows##SUFFIX((const T *)t->p[0], (const float *)t->p[1], (const float *)t->p[2], (T *)t->acc, \
                           t->l[0], r0, r1);                                                       \
    }                                                                                              \
    void scale_rows_par##SUFFIX(const T *w, const float *rs, const float *cs, T *out, long cols, long r0, \
                                long r1, long parts) {                                             \
        struct task t = {scale_body##SUFFIX, {w, rs, cs, 0, 0}, {cols, 0, 0, 0, 0, 0}, 0.f, (float *)out, \
                         0, r0, r1, parts};                                                        \
        run_task(&t);                                                                              \
    }

DEFINE_PARALLEL(float, )
DEFINE_PARALLEL(bf16, _bf16)
