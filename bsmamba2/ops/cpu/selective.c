/* The Mamba-1 selective scan, forward only, for the CPU: bsmamba2/ops/cpu/selective.py builds
 * this file with the system's C compiler on first use and calls it through ctypes.
 *
 * Per channel c and state s:  h_t = 2^(Δ_t A2_cs) h_{t-1} + Δ_t u_t B_ts,
 * y_t = Σ_s C_ts h_t + D_c u_t,  out_t = y_t · silu(z_t),  Δ = softplus(delta + bias) (optional),
 * with A2 = A · log2(e). The channels go in blocks of W (a vector register's float32 lanes).
 * A work item is a chunk of CHUNK blocks of one sequence; it walks the sequence in tiles of TILE
 * steps, and each block runs a tile with its states in registers, time innermost: the tile's
 * rows stay in the cache for the chunk's blocks, the next steps' lines are prefetched (a step is
 * a row of the channel-last tensors, on a page of its own). The items are shared out over OpenMP
 * threads. The exponentials are a polynomial inline (below): no -ffast-math, no vector math
 * library, no call that would evict the states from the registers.
 *
 * Layouts (the Python side prepares them): u, delta, z, out channel-contiguous, batch and time
 * strides given, float32 or bfloat16; B and C float32 (batch, groups, length, n); per block of
 * W channels (blocks numbered over the groups, the last of a group padded): the state
 * (batch, blocks, n, W), read as the initial state and overwritten with the final one, A2
 * (blocks, n, W), D and bias (blocks, W). */
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#define W 16
#elif defined(__AVX__)
#include <immintrin.h>
#define W 8
#else
#define W 8
#endif
#define MAX_STATES 256
#define CHUNK 8
#define TILE 64
#define PREFETCH 8 /* steps ahead */

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));
typedef uint32_t vu __attribute__((vector_size(4 * W)));
typedef uint16_t vh __attribute__((vector_size(2 * W)));
#define INLINE static inline __attribute__((always_inline))

INLINE vf splat(float x) { return (vf){0} + x; }

/* Lane-wise max and min: one instruction where there is one (C has no vector ?:). */
#if defined(__AVX512F__)
INLINE vf vmax(vf a, vf b) { return (vf)_mm512_max_ps((__m512)a, (__m512)b); }
INLINE vf vmin(vf a, vf b) { return (vf)_mm512_min_ps((__m512)a, (__m512)b); }
#elif defined(__AVX__)
INLINE vf vmax(vf a, vf b) { return (vf)_mm256_max_ps((__m256)a, (__m256)b); }
INLINE vf vmin(vf a, vf b) { return (vf)_mm256_min_ps((__m256)a, (__m256)b); }
#else
INLINE vf select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
INLINE vf vmax(vf a, vf b) { return select(a > b, a, b); }
INLINE vf vmin(vf a, vf b) { return select(a < b, a, b); }
#endif

/* 2^x: x = j + f with j integer, |f| <= 1/2; 2^f by a degree-6 fit (relative error below 1e-7),
 * times 2^j by adding j to the exponent bits. x is clamped to [-125, 127] (the result then stays
 * a normal float: below 2^-125 it is 2^-125, against states of order 1). */
INLINE vf exp2v(vf x) {
    const float magic = 12582912.0f; /* 1.5 · 2^23: adding it rounds to an integer */
    x = vmin(vmax(x, splat(-125.0f)), splat(127.0f));
    vf t = x + magic;
    vf f = x - (t - magic);
    vf p = splat(1.5370704932138324e-4f);
    p = p * f + 1.3399848248809576e-3f;
    p = p * f + 9.618373587727547e-3f;
    p = p * f + 5.550329014658928e-2f;
    p = p * f + 2.4022647738456726e-1f;
    p = p * f + 6.931471824645996e-1f;
    p = p * f + 1.0f;
    return (vf)((vi)p + (((vi)t - (vi)splat(magic)) << 23));
}

/* softplus(x) = max(x, 0) + ln(1 + y), y = e^{-|x|} in (0, 1]: ln(1 + y) = 2 atanh(s) with
 * s = y / (2 + y) <= 1/3, by its series (relative error ~1e-9): no cancellation for small y. */
INLINE vf softplus(vf x) {
    vf y = exp2v(vmin(x, -x) * 1.4426950408889634f);
    vf s = y / (y + 2.0f);
    vf s2 = s * s;
    vf p = splat(1.0f / 15);
    p = p * s2 + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    return vmax(x, splat(0.0f)) + 2.0f * s * p;
}

INLINE vf silu(vf z) { return z / (1.0f + exp2v(z * -1.4426950408889634f)); }

INLINE vf loadf(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

INLINE void storef(float *p, vf v) { memcpy(p, &v, sizeof v); }

/* W channels from p (float32 when bf16 == 0, else bfloat16); cnt < W loads the first cnt. */
INLINE vf load(const void *p, int bf16, int cnt) {
    if (cnt == W) {
        if (!bf16) return loadf(p);
        vh h;
        memcpy(&h, p, sizeof h);
        return (vf)(__builtin_convertvector(h, vu) << 16);
    }
    vf v = splat(0.0f);
    for (int k = 0; k < cnt; ++k) {
        if (bf16) {
            uint32_t bits = (uint32_t)((const uint16_t *)p)[k] << 16;
            memcpy(&v[k], &bits, 4);
        } else {
            v[k] = ((const float *)p)[k];
        }
    }
    return v;
}

/* bfloat16 bits of v, rounded to nearest even (NaN stays NaN). */
INLINE vh to_bf16(vf v) {
    vu bits = (vu)v, nan = (vu)(v != v);
    vu rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return __builtin_convertvector((rounded & ~nan) | (nan & 0x7FC0u), vh);
}

INLINE void store(void *p, vf v, int bf16, int cnt) {
    if (bf16) {
        vh h = to_bf16(v);
        if (cnt == W)
            memcpy(p, &h, sizeof h);
        else
            for (int k = 0; k < cnt; ++k) ((uint16_t *)p)[k] = h[k];
    } else if (cnt == W) {
        storef(p, v);
    } else {
        for (int k = 0; k < cnt; ++k) ((float *)p)[k] = v[k];
    }
}

typedef struct {
    int64_t batch, d, length, n, groups;
    const void *u, *delta, *z; /* z may be NULL */
    int64_t u_sb, u_st, delta_sb, delta_st, z_sb, z_st;
    const float *B, *C;    /* (batch, groups, length, n) */
    const float *A2;       /* (blocks, n, W) */
    const float *D, *bias; /* (blocks, W), or NULL */
    float *state;          /* (batch, blocks, n, W) */
    void *out;
    int64_t out_sb, out_st;
    int32_t bf16, softplus;
} scan_args;

/* Steps t0 … t1−1 of channels c0 … c0+cnt−1 (block blk, group g) of sequence b, from and back
 * to its state; h and a2 are the caller's arrays of N vectors. Where N is a constant and the
 * arrays the caller's own of that size, the loops over the states unroll into registers. */
INLINE void scan_tile(const scan_args *a, int64_t b, int64_t g, int64_t blk, int64_t c0, int cnt,
                      int64_t t0, int64_t t1, int64_t N, vf *h, vf *a2) {
    const int bf16 = a->bf16;
    const int64_t es = bf16 ? 2 : 4, n = a->n, blocks = a->groups * ((a->d / a->groups + W - 1) / W);
    float *state = a->state + (b * blocks + blk) * n * W;
    for (int64_t s = 0; s < N; ++s) {
        h[s] = loadf(state + s * W);
        a2[s] = loadf(a->A2 + (blk * n + s) * W);
    }
    const vf bias = a->bias ? loadf(a->bias + blk * W) : splat(0.0f);
    const vf Dv = a->D ? loadf(a->D + blk * W) : splat(0.0f);
    const int64_t u_st = a->u_st * es, delta_st = a->delta_st * es, z_st = a->z_st * es;
    const int64_t out_st = a->out_st * es;
    const char *u = (const char *)a->u + (b * a->u_sb + c0) * es + t0 * u_st;
    const char *dl = (const char *)a->delta + (b * a->delta_sb + c0) * es + t0 * delta_st;
    const char *z = a->z ? (const char *)a->z + (b * a->z_sb + c0) * es + t0 * z_st : NULL;
    char *out = (char *)a->out + (b * a->out_sb + c0) * es + t0 * out_st;
    const float *Bt = a->B + ((b * a->groups + g) * a->length + t0) * n;
    const float *Ct = a->C + ((b * a->groups + g) * a->length + t0) * n;
    for (int64_t t = t0; t < t1; ++t, u += u_st, dl += delta_st, out += out_st, Bt += n, Ct += n) {
        __builtin_prefetch(u + PREFETCH * u_st);
        __builtin_prefetch(dl + PREFETCH * delta_st);
        __builtin_prefetch(out + PREFETCH * out_st, 1);
        vf uv = load(u, bf16, cnt);
        vf dt = load(dl, bf16, cnt) + bias;
        if (a->softplus) dt = softplus(dt);
        vf du = dt * uv;
        vf y = Dv * uv;
#pragma GCC unroll 16
        for (int64_t s = 0; s < N; ++s) {
            h[s] = exp2v(dt * a2[s]) * h[s] + du * Bt[s];
            y += h[s] * Ct[s];
        }
        if (z) {
            __builtin_prefetch(z + PREFETCH * z_st);
            y *= silu(load(z, bf16, cnt));
            z += z_st;
        }
        store(out, y, bf16, cnt);
    }
    for (int64_t s = 0; s < N; ++s) storef(state + s * W, h[s]);
}

/* The tile, specialised for 16 states (the paper's d_state) and full blocks; others generic. */
static void scan_tile_any(const scan_args *a, int64_t b, int64_t g, int64_t blk, int64_t c0, int cnt,
                          int64_t t0, int64_t t1) {
    if (a->n == 16) {
        vf h[16], a2[16];
        if (cnt == W) scan_tile(a, b, g, blk, c0, W, t0, t1, 16, h, a2);
        else scan_tile(a, b, g, blk, c0, cnt, t0, t1, 16, h, a2);
    } else {
        vf h[MAX_STATES], a2[MAX_STATES];
        scan_tile(a, b, g, blk, c0, cnt, t0, t1, a->n, h, a2);
    }
}

/* The whole scan over `threads` OpenMP threads; returns 0, or 1 when n exceeds MAX_STATES. */
int bsm_selective_scan(const scan_args *a, int threads) {
    if (a->n > MAX_STATES) return 1;
    const int64_t dg = a->d / a->groups, per_group = (dg + W - 1) / W;
    const int64_t chunks = (per_group + CHUNK - 1) / CHUNK, items = a->batch * a->groups * chunks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t i = 0; i < items; ++i) {
        const int64_t chunk = i % chunks, g = (i / chunks) % a->groups, b = i / (chunks * a->groups);
        const int64_t first = chunk * CHUNK, last = first + CHUNK < per_group ? first + CHUNK : per_group;
        for (int64_t t0 = 0; t0 < a->length; t0 += TILE) {
            const int64_t t1 = t0 + TILE < a->length ? t0 + TILE : a->length;
            for (int64_t k = first; k < last; ++k) {
                const int cnt = (int)(dg - k * W < W ? dg - k * W : W);
                scan_tile_any(a, b, g, g * per_group + k, g * dg + k * W, cnt, t0, t1);
            }
        }
    }
    return 0;
}

/* What the Python side checks the library against: its lanes and its argument struct's size. */
int bsm_lanes(void) { return W; }
int bsm_args_size(void) { return (int)sizeof(scan_args); }
