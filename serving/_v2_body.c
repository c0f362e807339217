/* The row of the commonest Open Inference Protocol v2 infer body, read in one pass in C.
 *
 * `serving.v2_requests.numeric_row` calls `read_row(raw, max_features)` first. The body it reads
 * is `{"inputs": [...]}` alone, one tensor per feature, each `{"name": ..., "shape": [1],
 * "datatype": ..., "data": [number]}` in that order, all of one datatype (FP64, FP32, FP16 or
 * INT64), laid out as Python's json.dumps or a compact writer lays it out: the layouts of
 * `serving.v2_requests._LAYOUTS`, whose texts are repeated below. It returns the row, or None
 * for anything it does not read itself, which the Python reader then reads (or leaves to the
 * general reading): a name with an escape or a control character, an integer of more than 18
 * digits, a float past the fast algorithm's reach written in more than 63 characters, a value
 * that is not finite, an FP32 or FP16 value out of its datatype's range (the general reading
 * refuses it), a name given twice, more names than `max_features`, any other byte anywhere.
 * (A typo in the texts below would only leave bodies to the Python reader; a test checks that
 * each layout and datatype is read here.)
 *
 * The row is the general reading's (`parse_infer_body`, orjson), value for value:
 * - a name is the UTF-8 text between its quotes (no escapes here, so no decoding beyond
 *   UTF-8; invalid UTF-8 is left to the others, as orjson refuses it);
 * - a number is checked against JSON's grammar; an integer literal is an `int` (INT64) or
 *   `float(int)` (the float datatypes): both exact or correctly rounded, as Python's; a
 *   literal with a fraction or an exponent is a float, correctly rounded as orjson reads it:
 *   by Eisel and Lemire's algorithm (`to_double`, as in fast_float and simdjson: ≈ 10 ns)
 *   when it has at most 19 significant digits and the algorithm can decide, else by the C
 *   library's `strtod_l` in the "C" locale (glibc's is correctly rounded; ≈ 80 ns for a
 *   float's 17 digits, Python's own `PyOS_string_to_double` ≈ 250);
 * - `tests/serving/test_v2_requests_bytes.py` compares every reader with the general reading
 *   on generated bodies (names, literals, bytes cut or slipped in anywhere).
 *
 * Built by `pip install` (pyproject.toml, an optional extension): without a C compiler the
 * Python reader alone answers, with the same rows.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE  /* strtod_l */
#include <Python.h>
#include <locale.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_v2_body_pow5.h"

/* The "C" locale's numbers ('.' as the decimal point), whatever the process's locale. */
static locale_t c_numbers;

typedef struct {
    const char *text;
    Py_ssize_t size;
} Text;

#define TEXT(literal) {literal, sizeof(literal) - 1}

/* [layout]: json.dumps's spaced layout, then the compact one. */
static const Text PREFIX[2] = {TEXT("{\"inputs\": [{\"name\": "), TEXT("{\"inputs\":[{\"name\":")};
static const Text BETWEEN[2] = {TEXT("]}, {\"name\": "), TEXT("]},{\"name\":")};
static const Text SUFFIX = TEXT("]}]}");
/* [layout][datatype]: from a name's closing quote to its value; INT64 last. */
#define INT64_KIND 3
static const Text MIDDLE[2][4] = {
    {
        TEXT(", \"shape\": [1], \"datatype\": \"FP64\", \"data\": ["),
        TEXT(", \"shape\": [1], \"datatype\": \"FP32\", \"data\": ["),
        TEXT(", \"shape\": [1], \"datatype\": \"FP16\", \"data\": ["),
        TEXT(", \"shape\": [1], \"datatype\": \"INT64\", \"data\": ["),
    },
    {
        TEXT(",\"shape\":[1],\"datatype\":\"FP64\",\"data\":["),
        TEXT(",\"shape\":[1],\"datatype\":\"FP32\",\"data\":["),
        TEXT(",\"shape\":[1],\"datatype\":\"FP16\",\"data\":["),
        TEXT(",\"shape\":[1],\"datatype\":\"INT64\",\"data\":["),
    },
};

/* [datatype]: the least magnitude the datatype rounds to infinity, a value at or past it being
 * left to the others (`serving.v2_tensors.FLOAT_OVERFLOW`): FP32's 2^128 - 2^103 and FP16's
 * 65520, each halfway between the largest finite value and the next power of two. */
static const double OVERFLOW[4] = {INFINITY, 0x1.ffffffp127, 65520.0, 0.0};

/* The names of the last body read, by position: a client sends the same names in the same
 * order request after request, so a name equal to the one at its position last time is that
 * `str` again (no decoding, its hash kept). Only short names are kept (at most 64 kB in all,
 * whatever the bodies). Read and written with the GIL held. */
#define KEPT_NAMES 1024
#define KEPT_NAME_BYTES 64
static PyObject *kept_names[KEPT_NAMES];

static PyObject *
name_at(Py_ssize_t position, const char *name, Py_ssize_t size)
{
    PyObject *kept = position < KEPT_NAMES ? kept_names[position] : NULL;
    if (kept != NULL && PyUnicode_IS_COMPACT_ASCII(kept) && PyUnicode_GET_LENGTH(kept) == size
        && memcmp(PyUnicode_DATA(kept), name, (size_t)size) == 0) {
        Py_INCREF(kept);
        return kept;
    }
    PyObject *decoded = PyUnicode_DecodeUTF8(name, size, "strict");
    if (decoded != NULL && position < KEPT_NAMES && size <= KEPT_NAME_BYTES) {
        Py_INCREF(decoded);
        Py_XSETREF(kept_names[position], decoded);
    }
    return decoded;
}

static int
starts(const char *at, const char *end, Text text)
{
    return end - at >= text.size && memcmp(at, text.text, (size_t)text.size) == 0;
}

/* The double nearest w * 10^q (ties to even), w > 0 holding at most 19 digits, into *out: 1,
 * or 0 when this cannot decide (then strtod does): Eisel and Lemire's algorithm, "Number
 * Parsing at a Gigabyte per Second" (2021), as fast_float's compute_float for binary64, but
 * leaving subnormals and infinities to strtod. */
static int
to_double(uint64_t w, int64_t q, double *out)
{
    if (q < POW5_SMALLEST) {
        *out = 0.0;
        return 1;
    }
    if (q > POW5_LARGEST)
        return 0;
    int lz = __builtin_clzll(w);
    w <<= lz;
    const uint64_t *power = POW5[q - POW5_SMALLEST];
    __uint128_t first = (__uint128_t)w * power[0];
    uint64_t high = (uint64_t)(first >> 64), low = (uint64_t)first;
    if ((high & 0x1FF) == 0x1FF) {  /* the 55 bits kept may carry: the low half's product */
        uint64_t second = (uint64_t)(((__uint128_t)w * power[1]) >> 64);
        low += second;
        if (second > low)
            high++;
    }
    if (low == UINT64_MAX && (q < -27 || q > 55))
        return 0;
    int upper = (int)(high >> 63);
    uint64_t mantissa = high >> (upper + 9);
    int64_t power2 = ((((int64_t)152170 + 65536) * q) >> 16) + 63 + upper - lz + 1023;
    if (power2 <= 0)
        return 0;  /* a subnormal */
    if (low <= 1 && q >= -4 && q <= 23 && (mantissa & 3) == 1
        && (mantissa << (upper + 9)) == high)
        mantissa &= ~(uint64_t)1;  /* exactly halfway: to even */
    mantissa += mantissa & 1;
    mantissa >>= 1;
    if (mantissa >= ((uint64_t)2 << 52)) {
        mantissa = (uint64_t)1 << 52;
        power2++;
    }
    mantissa &= ~((uint64_t)1 << 52);
    if (power2 >= 0x7FF)
        return 0;  /* an infinity */
    uint64_t bits = mantissa | ((uint64_t)power2 << 52);
    memcpy(out, &bits, sizeof bits);
    return 1;
}

static int
is_digit(const char *at, const char *end)
{
    return at < end && *at >= '0' && *at <= '9';
}

/* The number at *at (JSON's grammar), which a ']' must follow; *at is left on the ']'; an
 * integer when `integers`, else a float of magnitude under `overflow`. NULL (no exception set)
 * for anything this reader leaves to the others. */
static PyObject *
read_number(const char **at, const char *end, int integers, double overflow)
{
    const char *start = *at, *p = start;
    int fraction_or_exponent = 0, negative = 0, significant = 0;
    uint64_t w = 0;   /* the significant digits, while at most 19 */
    int64_t q = 0;    /* the power of ten they are multiplied by */

    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p < end && *p == '0')
        p++;
    else if (is_digit(p, end))
        for (; is_digit(p, end); p++) {
            if (significant < 19)
                w = w * 10 + (uint64_t)(*p - '0');
            else
                q++;
            significant++;
        }
    else
        return NULL;
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end))
            return NULL;
        for (; is_digit(p, end); p++) {
            if (significant == 0 && *p == '0') {
                q--;  /* a leading zero */
                continue;
            }
            if (significant < 19) {
                w = w * 10 + (uint64_t)(*p - '0');
                q--;
            }
            significant++;
        }
        fraction_or_exponent = 1;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        int minus = 0;
        if (p < end && (*p == '+' || *p == '-'))
            minus = *p++ == '-';
        if (!is_digit(p, end))
            return NULL;
        int64_t exponent = 0;
        for (; is_digit(p, end); p++) {
            exponent = exponent * 10 + (*p - '0');
            if (exponent > 100000000)  /* kept exact (a larger one: the others read it) */
                return NULL;
        }
        q += minus ? -exponent : exponent;
        fraction_or_exponent = 1;
    }
    if (p >= end || *p != ']')
        return NULL;
    Py_ssize_t size = p - start;
    *at = p;

    if (!fraction_or_exponent) {
        if (size - negative > 18)  /* within a long long, whatever the digits */
            return NULL;
        long long value = (long long)w;
        if (negative)
            value = -value;  /* "-0" is the integer 0, as orjson reads it */
        if (integers)
            return PyLong_FromLongLong(value);
        double rounded = (double)value;  /* correctly rounded, as float(int) */
        if (!(fabs(rounded) < overflow))
            return NULL;
        return PyFloat_FromDouble(rounded);
    }
    if (integers)
        return NULL;
    double value;
    if (significant == 0)
        value = 0.0;
    else if (significant > 19 || !to_double(w, q, &value)) {
        if (size > 63)
            return NULL;
        char copy[64];
        memcpy(copy, start, (size_t)size);
        copy[size] = '\0';
        char *stop = NULL;
        value = strtod_l(copy, &stop, c_numbers);
        if (stop != copy + size)
            return NULL;
        negative = 0;  /* strtod read the sign */
    }
    if (!isfinite(value) || !(fabs(value) < overflow))
        return NULL;
    return PyFloat_FromDouble(negative ? -value : value);
}

static PyObject *
read_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_row(raw: bytes, max_features: int)");
        return NULL;
    }
    Py_ssize_t max_features = PyLong_AsSsize_t(args[1]);
    if (max_features == -1 && PyErr_Occurred())
        return NULL;
    const char *p = PyBytes_AS_STRING(args[0]);
    const char *end = p + PyBytes_GET_SIZE(args[0]);

    int layout = starts(p, end, PREFIX[0]) ? 0 : starts(p, end, PREFIX[1]) ? 1 : -1;
    if (layout < 0)
        Py_RETURN_NONE;
    p += PREFIX[layout].size;
    if (end - p < SUFFIX.size || memcmp(end - SUFFIX.size, SUFFIX.text, (size_t)SUFFIX.size))
        Py_RETURN_NONE;
    const char *last = end - SUFFIX.size;  /* where the last value's ']' must be */

    PyObject *row = PyDict_New();
    if (row == NULL)
        return NULL;
    int kind = -1;
    Py_ssize_t n = 0;
    for (;;) {
        if (p >= last || *p != '"')
            goto other;
        const char *name = ++p;
        while (p < last && *p != '"') {
            unsigned char c = (unsigned char)*p;
            if (c < 0x20 || c == '\\')
                goto other;
            p++;
        }
        if (p >= last)
            goto other;
        PyObject *key = name_at(n, name, p - name);
        if (key == NULL) {
            PyErr_Clear();
            goto other;
        }
        p++;
        if (kind < 0) {
            for (int k = 0; k < 4 && kind < 0; k++)
                if (starts(p, last, MIDDLE[layout][k]))
                    kind = k;
            if (kind < 0) {
                Py_DECREF(key);
                goto other;
            }
        }
        else if (!starts(p, last, MIDDLE[layout][kind])) {
            Py_DECREF(key);
            goto other;
        }
        p += MIDDLE[layout][kind].size;
        PyObject *value = read_number(&p, end, kind == INT64_KIND, OVERFLOW[kind]);
        if (value == NULL) {
            Py_DECREF(key);
            if (PyErr_Occurred())
                goto fail;
            goto other;
        }
        int failed = PyDict_SetItem(row, key, value);
        Py_DECREF(key);
        Py_DECREF(value);
        if (failed)
            goto fail;
        if (++n > max_features || PyDict_GET_SIZE(row) != n)  /* too many, a name twice */
            goto other;
        if (p == last)
            return row;
        if (!starts(p, last, BETWEEN[layout]))
            goto other;
        p += BETWEEN[layout].size;
    }
other:
    Py_DECREF(row);
    Py_RETURN_NONE;
fail:
    Py_DECREF(row);
    return NULL;
}

static PyMethodDef methods[] = {
    {"read_row", (PyCFunction)(void (*)(void))read_row, METH_FASTCALL,
     "read_row(raw, max_features) -> dict | None: the row of the commonest v2 infer body."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "serving._v2_body",
    .m_doc = "The commonest Open Inference Protocol v2 infer body, read in C (see _v2_body.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__v2_body(void)
{
    c_numbers = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0);
    if (c_numbers == (locale_t)0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyModule_Create(&module);
}
