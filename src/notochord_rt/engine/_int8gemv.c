/*
 * Batch-1 int8 matrix-vector product for FastCore (notochord_rt.engine._int8gemv).
 *
 * y = (W x) * row_scale + bias, with W stored as int8 (one scale per output row, rows padded
 * to a multiple of 64 bytes) and x float32, quantised on the fly to unsigned 8 bits over
 * its range (x ~ lo + s x_q, s = (max - min) / 255). The dot products run on AVX-512 VNNI
 * (vpdpbusd: 64 u8 x s8 products per instruction, summed in 32 bits, never saturating),
 * four rows at a time so every 64-byte block of x is loaded once per four rows. The offset
 * is added back with precomputed row sums: W x = s (W x_q) + lo * sum(W).
 *
 * Why: at batch 1 a Notochord step is a chain of small GEMVs. FBGEMM's dynamic int8 linear
 * costs 10-15 us per call before touching a weight (activation statistics, output tensor,
 * dispatch), which for the default model's 16 products per event is as much as streaming
 * the weights. This kernel is one C call on preallocated buffers.
 *
 * The Python side (quant.py) only uses it when `available()` says the CPU has AVX-512 VNNI;
 * otherwise it keeps FBGEMM. Pointers are passed as integers (torch data_ptr()); the caller
 * guarantees sizes and lifetimes (all buffers are owned by a PackedLinear).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_X86 1
#else
#define HAVE_X86 0
#endif

#ifndef PF_HINT
#define PF_HINT _MM_HINT_T0
#endif
#ifndef PF_BYTES
#define PF_BYTES 2048
#endif

#if HAVE_X86
__attribute__((target("avx512f,avx512bw,avx512vnni")))
static void gemv_vnni(const int8_t *w, const float *scale, const int32_t *rowsum,
                      const float *bias, const float *x, float *y, int64_t out,
                      int64_t in, int64_t in_pad, uint8_t *xq)
{
    /* 1. quantise x to u8 over its range: x ~ lo + s * x_q, x_q in 0..255 */
    __m512 vmax = _mm512_set1_ps(-INFINITY), vmin = _mm512_set1_ps(INFINITY);
    int64_t i = 0;
    for (; i + 16 <= in; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        vmax = _mm512_max_ps(vmax, v);
        vmin = _mm512_min_ps(vmin, v);
    }
    float hi = _mm512_reduce_max_ps(vmax), lo = _mm512_reduce_min_ps(vmin);
    for (; i < in; i++) {
        if (x[i] > hi) hi = x[i];
        if (x[i] < lo) lo = x[i];
    }
    const float s = (hi - lo) / 255.0f;
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    const __m512 vinv = _mm512_set1_ps(inv), vlo = _mm512_set1_ps(lo);
    const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(255);
    i = 0;
    for (; i + 16 <= in; i += 16) {
        __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vlo),
                                                     vinv));
        q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
        _mm_storeu_si128((__m128i *)(xq + i), _mm512_cvtepi32_epi8(q));
    }
    for (; i < in; i++) {
        int q = (int)nearbyintf((x[i] - lo) * inv);
        xq[i] = (uint8_t)(q < 0 ? 0 : q > 255 ? 255 : q);
    }
    for (; i < in_pad; i++) xq[i] = 0;

    /* 2. four rows at a time; the weights of a 4-row block are interleaved per 64 bytes
     * (row r's bytes k..k+63 at block + 4k + 64r), so the whole matrix is read as one
     * sequential stream */
    const int64_t out4 = (out + 3) & ~(int64_t)3;
    for (int64_t o = 0; o < out4; o += 4) {
        const int8_t *blk = w + o * in_pad;
        __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < in_pad; k += 64) {
            const int8_t *b = blk + 4 * k;
            _mm_prefetch((const char *)b + PF_BYTES, PF_HINT);
            _mm_prefetch((const char *)b + PF_BYTES + 64, PF_HINT);
            _mm_prefetch((const char *)b + PF_BYTES + 128, PF_HINT);
            _mm_prefetch((const char *)b + PF_BYTES + 192, PF_HINT);
            __m512i xv = _mm512_loadu_si512((const void *)(xq + k));
            a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_loadu_si512((const void *)(b)));
            a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_loadu_si512((const void *)(b + 64)));
            a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_loadu_si512((const void *)(b + 128)));
            a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_loadu_si512((const void *)(b + 192)));
        }
        int32_t acc[4] = {_mm512_reduce_add_epi32(a0), _mm512_reduce_add_epi32(a1),
                          _mm512_reduce_add_epi32(a2), _mm512_reduce_add_epi32(a3)};
        for (int r = 0; r < 4 && o + r < out; r++) {
            float v = scale[o + r] * (s * (float)acc[r] + lo * (float)rowsum[o + r]);
            y[o + r] = bias ? v + bias[o + r] : v;
        }
    }
}
#endif

#if HAVE_X86
/* exp for |x| <= 88 to ~2 ulp: 2^n * p(r), r = x - n ln2, degree-6 Taylor on |r| <= ln2/2 */
__attribute__((target("avx512f")))
static inline __m512 exp16(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504089f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

__attribute__((target("avx512f")))
static inline __m512 sigmoid16(__m512 x)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

/* y = LayerNorm(a * sigmoid(b)) for x = [a | b] (each `half` long); no norm if w is NULL */
__attribute__((target("avx512f")))
static void glu_ln(const float *x, float *y, int64_t half, const float *w, const float *b,
                   float eps)
{
    int64_t i = 0;
    for (; i + 16 <= half; i += 16)
        _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(x + i),
                                              sigmoid16(_mm512_loadu_ps(x + half + i))));
    for (; i < half; i++) y[i] = x[i] / (1.0f + expf(-x[half + i]));
    if (!w) return;
    double sum = 0.0, sq = 0.0;
    for (i = 0; i < half; i++) sum += y[i];
    const float mean = (float)(sum / (double)half);
    for (i = 0; i < half; i++) {
        double d = (double)(y[i] - mean);
        sq += d * d;
    }
    const float rstd = 1.0f / sqrtf((float)(sq / (double)half) + eps);
    for (i = 0; i < half; i++) y[i] = (y[i] - mean) * rstd * w[i] + b[i];
}

/* y = tanh(x) = 2 sigmoid(2x) - 1 */
__attribute__((target("avx512f")))
static void tanh_n(const float *x, float *y, int64_t n)
{
    const __m512 two = _mm512_set1_ps(2.0f), one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmsub_ps(two, sigmoid16(_mm512_mul_ps(two,
                                                _mm512_loadu_ps(x + i))), one));
    for (; i < n; i++) y[i] = tanhf(x[i]);
}

/* One GRU step from the gate pre-activations (biases already in): gi, gh are [r | z | n]
 * (3H each; gh's n part carries the hidden bias), h the old state, out the new one:
 * r, z = sigmoid(gi + gh), n = tanh(gi_n + r * gh_n), out = n + z * (h - n). */
__attribute__((target("avx512f")))
static void gru_cell(const float *gi, const float *gh, const float *h, float *out, int64_t H)
{
    const __m512 two = _mm512_set1_ps(2.0f), one = _mm512_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 16 <= H; i += 16) {
        __m512 r = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gi + i), _mm512_loadu_ps(gh + i)));
        __m512 z = sigmoid16(_mm512_add_ps(_mm512_loadu_ps(gi + H + i),
                                           _mm512_loadu_ps(gh + H + i)));
        __m512 a = _mm512_fmadd_ps(r, _mm512_loadu_ps(gh + 2 * H + i),
                                   _mm512_loadu_ps(gi + 2 * H + i));
        __m512 n = _mm512_fmsub_ps(two, sigmoid16(_mm512_mul_ps(two, a)), one);
        __m512 hv = _mm512_loadu_ps(h + i);
        _mm512_storeu_ps(out + i, _mm512_fmadd_ps(z, _mm512_sub_ps(hv, n), n));
    }
    for (; i < H; i++) {
        float r = 1.0f / (1.0f + expf(-(gi[i] + gh[i])));
        float z = 1.0f / (1.0f + expf(-(gi[H + i] + gh[H + i])));
        float n = tanhf(gi[2 * H + i] + r * gh[2 * H + i]);
        out[i] = n + z * (h[i] - n);
    }
}

/* Decode a logistic mixture's raw head output in place: x = [logits | loc | raw sharpness]
 * (k each) -> [log-softmax | clamped loc | clamped softplus]. */
static void mixture_decode(float *x, int64_t k, float loc_lo, float loc_hi, float s_lo,
                           float s_hi)
{
    float m = x[0];
    for (int64_t i = 1; i < k; i++)
        if (x[i] > m) m = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < k; i++) sum += exp((double)(x[i] - m));
    const float lse = m + (float)log(sum);
    for (int64_t i = 0; i < k; i++) x[i] -= lse;
    for (int64_t i = k; i < 2 * k; i++) x[i] = x[i] < loc_lo ? loc_lo : x[i] > loc_hi ? loc_hi : x[i];
    for (int64_t i = 2 * k; i < 3 * k; i++) {
        float v = x[i];
        /* softplus as torch computes it (threshold 20: linear above) */
        float sp = v > 20.0f ? v : log1pf(expf(v));
        x[i] = sp < s_lo ? s_lo : sp > s_hi ? s_hi : sp;
    }
}
#endif

static int vnni_available(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}

static PyObject *py_available(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyBool_FromLong(vnni_available());
}

/* Arguments of every kernel wrapper: `spec` has one letter per argument, 'p' a pointer
 * (an int, 0 allowed only where the kernel accepts NULL: checked by the caller), 'n' a
 * size > 0, 'f' a float. Returns 0 and sets a Python error on failure. */
static int parse(const char *name, PyObject *const *args, Py_ssize_t nargs, const char *spec,
                 void **ptr, int64_t *num, double *flt)
{
    Py_ssize_t want = (Py_ssize_t)strlen(spec);
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s expects %zd arguments, got %zd", name, want, nargs);
        return 0;
    }
    for (Py_ssize_t k = 0; k < want; k++) {
        if (spec[k] == 'p') {
            *ptr++ = PyLong_AsVoidPtr(args[k]);
        } else if (spec[k] == 'n') {
            int64_t v = PyLong_AsLongLong(args[k]);
            if (!PyErr_Occurred() && v <= 0) {
                PyErr_Format(PyExc_ValueError, "%s: size argument %zd must be > 0", name, k);
                return 0;
            }
            *num++ = v;
        } else {
            *flt++ = PyFloat_AsDouble(args[k]);
        }
        if (PyErr_Occurred()) return 0;
    }
#if HAVE_X86
    if (vnni_available()) return 1;
#endif
    PyErr_Format(PyExc_RuntimeError, "%s: this CPU has no AVX-512 VNNI", name);
    return 0;
}

static int null_pointer(const char *name)
{
    PyErr_Format(PyExc_ValueError, "%s: null pointer", name);
    return 0;
}

/* gemv(w, scale, rowsum, bias_or_0, x, y, xq_buf, out, in, in_pad, rows)
 * rows > 1 applies the product to `rows` consecutive inputs/outputs (x: rows x in,
 * y: rows x out), reading the weights once per row. */
static PyObject *py_gemv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *p[7];
    int64_t n[4];
    if (!parse("gemv", args, nargs, "pppppppnnnn", p, n, NULL)) return NULL;
    if (!p[0] || !p[1] || !p[2] || !p[4] || !p[5] || !p[6]) return null_pointer("gemv"), NULL;
    int64_t out = n[0], in = n[1], in_pad = n[2], rows = n[3];
    if (in_pad < in || in_pad % 64) {
        PyErr_SetString(PyExc_ValueError, "gemv: in_pad must be a multiple of 64 >= in");
        return NULL;
    }
#if HAVE_X86
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < rows; r++)
        gemv_vnni((const int8_t *)p[0], (const float *)p[1], (const int32_t *)p[2],
                  (const float *)p[3], (const float *)p[4] + r * in, (float *)p[5] + r * out,
                  out, in, in_pad, (uint8_t *)p[6]);
    Py_END_ALLOW_THREADS
#endif
    Py_RETURN_NONE;
}

/* glu_ln(x, y, ln_w_or_0, ln_b_or_0, half, eps) */
static PyObject *py_glu_ln(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *p[4];
    int64_t half;
    double eps;
    if (!parse("glu_ln", args, nargs, "ppppnf", p, &half, &eps)) return NULL;
    if (!p[0] || !p[1] || (p[2] && !p[3])) return null_pointer("glu_ln"), NULL;
#if HAVE_X86
    glu_ln((const float *)p[0], (float *)p[1], half, (const float *)p[2], (const float *)p[3],
           (float)eps);
#endif
    Py_RETURN_NONE;
}

/* tanh(x, y, n) */
static PyObject *py_tanh(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *p[2];
    int64_t n;
    if (!parse("tanh", args, nargs, "ppn", p, &n, NULL)) return NULL;
    if (!p[0] || !p[1]) return null_pointer("tanh"), NULL;
#if HAVE_X86
    tanh_n((const float *)p[0], (float *)p[1], n);
#endif
    Py_RETURN_NONE;
}

/* gru_cell(gi, gh, h, out, H) */
static PyObject *py_gru_cell(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *p[4];
    int64_t H;
    if (!parse("gru_cell", args, nargs, "ppppn", p, &H, NULL)) return NULL;
    if (!p[0] || !p[1] || !p[2] || !p[3]) return null_pointer("gru_cell"), NULL;
#if HAVE_X86
    gru_cell((const float *)p[0], (const float *)p[1], (const float *)p[2], (float *)p[3], H);
#endif
    Py_RETURN_NONE;
}

/* mixture_decode(x, k, loc_lo, loc_hi, sharp_lo, sharp_hi) */
static PyObject *py_mixture_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    void *x;
    int64_t k;
    double b[4];
    if (!parse("mixture_decode", args, nargs, "pnffff", &x, &k, b)) return NULL;
    if (!x) return null_pointer("mixture_decode"), NULL;
    mixture_decode((float *)x, k, (float)b[0], (float)b[1], (float)b[2], (float)b[3]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "True if this CPU can run the VNNI kernel."},
    {"gemv", (PyCFunction)(void (*)(void))py_gemv, METH_FASTCALL,
     "gemv(w, scale, rowsum, bias, x, y, xq, out, in, in_pad, rows): int8 GEMV (pointers as ints)."},
    {"glu_ln", (PyCFunction)(void (*)(void))py_glu_ln, METH_FASTCALL,
     "glu_ln(x, y, ln_w, ln_b, half, eps): y = LayerNorm(a * sigmoid(b)) of x = [a | b]."},
    {"tanh", (PyCFunction)(void (*)(void))py_tanh, METH_FASTCALL, "tanh(x, y, n): y = tanh(x)."},
    {"gru_cell", (PyCFunction)(void (*)(void))py_gru_cell, METH_FASTCALL,
     "gru_cell(gi, gh, h, out, H): one GRU step from gate pre-activations."},
    {"mixture_decode", (PyCFunction)(void (*)(void))py_mixture_decode, METH_FASTCALL,
     "mixture_decode(x, k, loc_lo, loc_hi, sharp_lo, sharp_hi): decode a mixture in place."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_int8gemv",
    "AVX-512 VNNI int8 matrix-vector product for FastCore (see quant.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__int8gemv(void) { return PyModule_Create(&module); }
