/* Depthwise 7x7 convolution (stride 1, padding 3) on NHWC float32, the ConvNeXt block's dwconv.
 *
 * Why this exists: on CPU, oneDNN's depthwise weight gradient runs at ~1/7 of its forward
 * speed and is a fifth of a ConvNeXt training step. The weight gradient is a per-channel
 * correlation reduced over the whole image; here it is computed with seven vector
 * accumulators held in registers along each image row, at forward-like speed. The forward
 * (also the input gradient, with the kernel flipped) keeps TILE output columns in registers.
 *
 * Plain C with GCC/Clang vector extensions: 8 channels per vector, so C must be a multiple of 8.
 * Every function works on a range of rows [r0, r1) of the N*H rows, so callers split the work
 * across threads; no function allocates, no global state.
 */
#include <stddef.h>

typedef float v8 __attribute__((vector_size(32), aligned(4)));

#define K 7
#define PAD 3
#define TILE 8

static inline v8 load8(const float *p) { return *(const v8 *)p; }
static inline void store8(float *p, v8 v) { *(v8 *)p = v; }

/* TILE output columns starting at w0 of row (n, h); `interior` means no column check is needed. */
static inline void forward_tile(const float *x, const float *wt, const float *bias, float *y,
                                long n, long h, long yr, long H, long W, long C, long w0, int interior) {
    for (long cb = 0; cb < C; cb += 8) {
        v8 acc[TILE];
        v8 b = bias ? load8(bias + cb) : (v8){0};
        for (int t = 0; t < TILE; ++t) acc[t] = b;
        for (int i = 0; i < K; ++i) {
            long hx = h + i - PAD;
            if (hx < 0 || hx >= H) continue;
            const float *xrow = x + (n * H + hx) * W * C + cb;
            for (int j = 0; j < K; ++j) {
                v8 wv = load8(wt + (i * K + j) * C + cb);
                if (interior) {
                    const float *xp = xrow + (w0 + j - PAD) * C;
                    for (int t = 0; t < TILE; ++t) acc[t] += wv * load8(xp + t * C);
                } else {
                    for (int t = 0; t < TILE; ++t) {
                        long wx = w0 + t + j - PAD;
                        if (w0 + t < W && wx >= 0 && wx < W) acc[t] += wv * load8(xrow + wx * C);
                    }
                }
            }
        }
        float *yp = y + (yr * W + w0) * C + cb;
        for (int t = 0; t < TILE; ++t)
            if (w0 + t < W) store8(yp + t * C, acc[t]);
    }
}

/* LayerNorm over the C channels of each of the tile's pixels, in place while they are in cache. */
static inline void layer_norm_tile(float *y, const float *ln_w, const float *ln_b, float eps,
                                   long yr, long W, long C, long w0) {
    for (int t = 0; t < TILE && w0 + t < W; ++t) {
        float *p = y + (yr * W + w0 + t) * C;
        v8 s = (v8){0};
        for (long cb = 0; cb < C; cb += 8) s += load8(p + cb);
        float mean = 0.f;
        for (int k = 0; k < 8; ++k) mean += s[k];
        mean /= (float)C;
        v8 m = mean - (v8){0}, q = (v8){0};
        for (long cb = 0; cb < C; cb += 8) { v8 d = load8(p + cb) - m; q += d * d; }
        float var = 0.f;
        for (int k = 0; k < 8; ++k) var += q[k];
        var /= (float)C;
        float rstd = 1.0f / __builtin_sqrtf(var + eps);
        v8 r = rstd - (v8){0};
        for (long cb = 0; cb < C; cb += 8)
            store8(p + cb, (load8(p + cb) - m) * r * load8(ln_w + cb) + load8(ln_b + cb));
    }
}

/* y[n,h,w,c] = bias[c] + sum_ij wt[(i*7+j)*C + c] * x[n, h+i-3, w+j-3, c]; bias may be NULL.
 * With ln_w/ln_b (not NULL), y is then layer-normalised over c (the block's LayerNorm, fused).
 * Row r = n*H + h of the output goes to row r - y_row0 of y, so y may hold just rows
 * [y_row0, ...): the inference path streams a block over chunks of rows. */
void dwconv7_forward(const float *x, const float *wt, const float *bias, float *y,
                     const float *ln_w, const float *ln_b, float eps,
                     long N, long H, long W, long C, long r0, long r1, long y_row0) {
    (void)N;
    for (long r = r0; r < r1; ++r) {
        long n = r / H, h = r % H, yr = r - y_row0;
        for (long w0 = 0; w0 < W; w0 += TILE) {
            if (w0 >= PAD && w0 + TILE - 1 + PAD < W)
                forward_tile(x, wt, bias, y, n, h, yr, H, W, C, w0, 1);
            else
                forward_tile(x, wt, bias, y, n, h, yr, H, W, C, w0, 0);
            if (ln_w) layer_norm_tile(y, ln_w, ln_b, eps, yr, W, C, w0);
        }
    }
}

/* acc[(i*7+j)*C + c] += sum over rows [r0, r1) and w of g[n,h,w,c] * x[n, h+i-3, w+j-3, c]. */
void dwconv7_grad_weight(const float *x, const float *g, float *acc,
                         long N, long H, long W, long C, long r0, long r1) {
    (void)N;
    for (long r = r0; r < r1; ++r) {
        long n = r / H, h = r % H;
        const float *grow = g + r * W * C;
        for (int i = 0; i < K; ++i) {
            long hx = h + i - PAD;
            if (hx < 0 || hx >= H) continue;
            const float *xrow = x + (n * H + hx) * W * C;
            for (long cb = 0; cb < C; cb += 8) {
                v8 a[K];
                for (int j = 0; j < K; ++j) a[j] = (v8){0};
                for (long w = 0; w < W; ++w) {
                    v8 gv = load8(grow + w * C + cb);
                    if (w >= PAD && w + PAD < W) {
                        const float *xp = xrow + (w - PAD) * C + cb;
                        for (int j = 0; j < K; ++j) a[j] += gv * load8(xp + j * C);
                    } else {
                        for (int j = 0; j < K; ++j) {
                            long wx = w + j - PAD;
                            if (wx >= 0 && wx < W) a[j] += gv * load8(xrow + wx * C + cb);
                        }
                    }
                }
                for (int j = 0; j < K; ++j) {
                    float *p = acc + (i * K + j) * C + cb;
                    store8(p, load8(p) + a[j]);
                }
            }
        }
    }
}

/* acc[n*C + c] += sum over rows l in [r0, r1) of a[n, l, c]^2 (a is (N, L, C)); rows are global
 * indices n*L + l, read once each, in order. Sums go in blocks of 256 rows (a block's partial
 * sums stay in `part`, in cache), so float32 error stays ~(256 + L/256) ulp. GRN's statistic:
 * one pass, no temporary (torch would materialise a*a first). C <= 4096. */
void sum_of_squares_rows(const float *a, float *acc, long L, long C, long r0, long r1) {
    float part[4096] __attribute__((aligned(32)));
    for (long r = r0; r < r1;) {
        long n = r / L, end = (n + 1) * L < r1 ? (n + 1) * L : r1;
        float *out = acc + n * C;
        for (long b = r; b < end; b += 256) {
            long stop = b + 256 < end ? b + 256 : end;
            for (long cb = 0; cb < C; cb += 8) store8(part + cb, (v8){0});
            for (long l = b; l < stop; ++l) {
                const float *row = a + l * C;
                for (long cb = 0; cb < C; cb += 8) {
                    v8 u = load8(row + cb);
                    store8(part + cb, load8(part + cb) + u * u);
                }
            }
            for (long cb = 0; cb < C; cb += 8) store8(out + cb, load8(out + cb) + load8(part + cb));
        }
        r = end;
    }
}
