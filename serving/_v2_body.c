/* The commonest request bodies, read in one pass in C: the row of an Open Inference Protocol v2
 * infer body (`read_row`, below), and a `/v1` predict body's features (`read_features`,
 * further down) or their sum for a linear model (`read_dot`: the same numbers, the features
 * never built).
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
static PyObject *kept_names[KEPT_NAMES];  /* v2's */
static PyObject *kept_features[KEPT_NAMES];  /* `/v1`'s */

static PyObject *
name_at(PyObject **kept_names, Py_ssize_t position, const char *name, Py_ssize_t size)
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

/* Eight digits at once, as fast_float and simdjson read them (Lemire's SWAR): the eight bytes
 * at `at` as one little-endian word. `eight_digits` says whether every byte is '0'..'9' (a byte
 * under '0' borrows in the subtraction, one over '9' carries into its top bit in the sum);
 * `eight_digits_value` is their value: pairs, then fours, then the eight, by multiplications. */
static uint64_t
load_eight(const char *at)
{
    uint64_t word;
    memcpy(&word, at, sizeof word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    return word;
}

static int
eight_digits(uint64_t word)
{
    return !(((word + 0x4646464646464646ULL) | (word - 0x3030303030303030ULL)) &
             0x8080808080808080ULL);
}

static uint64_t
eight_digits_value(uint64_t word)
{
    word -= 0x3030303030303030ULL;         /* each byte its digit, the first lowest */
    word = word * 10 + (word >> 8);        /* each even byte: two digits' value */
    uint64_t pairs = word & 0x000000FF000000FFULL, odd = (word >> 16) & 0x000000FF000000FFULL;
    /* 100 * (pairs 1 and 3) + (pairs 2 and 4), then 10^4 * the first four + the last four */
    return ((pairs * 0x000F424000000064ULL) + (odd * 0x0000271000000001ULL)) >> 32;
}

/* A number literal as read: an integer (at most 18 digits) or a finite float. */
typedef struct {
    int is_float;
    long long integer;
    double real;
} Number;

/* The number at *at (JSON's grammar) into *out, *at left after it: 1, or 0 for anything this
 * reader leaves to the others (an integer of more than 18 digits, a float that is not finite
 * or past the fast algorithm's reach written in more than 63 characters, no number). What
 * follows it is the caller's to check. */
static int
scan_number(const char **at, const char *end, Number *out)
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
    else if (is_digit(p, end)) {
        uint64_t word;  /* eight digits at once while w stays exact (at most 16 of them) */
        while (significant <= 8 && end - p >= 8 && eight_digits(word = load_eight(p))) {
            w = w * 100000000 + eight_digits_value(word);
            significant += 8;
            p += 8;
        }
        for (; is_digit(p, end); p++) {
            if (significant < 19)
                w = w * 10 + (uint64_t)(*p - '0');
            else
                q++;
            significant++;
        }
    }
    else
        return 0;
    if (p < end && *p == '.') {
        p++;
        if (!is_digit(p, end))
            return 0;
        for (; significant == 0 && p < end && *p == '0'; p++)
            q--;  /* a leading zero */
        uint64_t word;  /* then eight at once, as above */
        while (significant <= 8 && end - p >= 8 && eight_digits(word = load_eight(p))) {
            w = w * 100000000 + eight_digits_value(word);
            significant += 8;
            q -= 8;
            p += 8;
        }
        for (; is_digit(p, end); p++) {
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
            return 0;
        int64_t exponent = 0;
        for (; is_digit(p, end); p++) {
            exponent = exponent * 10 + (*p - '0');
            if (exponent > 100000000)  /* kept exact (a larger one: the others read it) */
                return 0;
        }
        q += minus ? -exponent : exponent;
        fraction_or_exponent = 1;
    }
    Py_ssize_t size = p - start;

    if (!fraction_or_exponent) {
        if (size - negative > 18)  /* within a long long, whatever the digits */
            return 0;
        long long value = (long long)w;
        out->is_float = 0;
        out->integer = negative ? -value : value;  /* "-0" is the integer 0, as orjson reads it */
        *at = p;
        return 1;
    }
    double value;
    if (significant == 0)
        value = 0.0;
    else if (significant > 19 || !to_double(w, q, &value)) {
        if (size > 63)
            return 0;
        char copy[64];
        memcpy(copy, start, (size_t)size);
        copy[size] = '\0';
        char *stop = NULL;
        value = strtod_l(copy, &stop, c_numbers);
        if (stop != copy + size)
            return 0;
        negative = 0;  /* strtod read the sign */
    }
    if (!isfinite(value))
        return 0;
    out->is_float = 1;
    out->real = negative ? -value : value;
    *at = p;
    return 1;
}

/* The number at *at, which a ']' must follow, into *out; *at is left on the ']'; an integer
 * when `integers`, else (an integer literal too) a value of magnitude under `overflow`. 1, or 0
 * for anything this reader leaves to the others. */
static int
read_value(const char **at, const char *end, int integers, double overflow, Number *out)
{
    const char *p = *at;
    if (!scan_number(&p, end, out) || p >= end || *p != ']')
        return 0;
    if (out->is_float ? integers || !(fabs(out->real) < overflow)
                      : !integers && !(fabs((double)out->integer) < overflow))
        return 0;
    *at = p;
    return 1;
}

/* A value `read_value` read, as the v2 reading gives it: an `int` when `integers` (INT64),
 * else a float (of an integer literal too: correctly rounded, as float(int)). */
static PyObject *
value_object(const Number *number, int integers)
{
    if (number->is_float)
        return PyFloat_FromDouble(number->real);
    if (integers)
        return PyLong_FromLongLong(number->integer);
    return PyFloat_FromDouble((double)number->integer);
}

/* The `n`-th value read (`value_object` of `number`) put in `row` under `key`: 1; 0 for a name
 * given twice (orjson keeps the last value at the first place: left to the others); -1 with an
 * exception set. */
static int
add_value(PyObject *row, PyObject *key, const Number *number, int integers, Py_ssize_t n)
{
    PyObject *value = value_object(number, integers);
    if (value == NULL)
        return -1;
    int failed = PyDict_SetItem(row, key, value);
    Py_DECREF(value);
    if (failed)
        return -1;
    return PyDict_GET_SIZE(row) == n;
}

/* A set of objects for one body, on the stack up to SEEN_ON_STACK / 2 of them, then on the heap.
 * By identity (`by_name` 0): the known features, as their `params` entries (a name given twice
 * is found by its entry; two names sharing one entry object, which `learners.linear` never
 * builds, are taken for one name, which only leaves the body to the general reading). By value
 * (`by_name` 1): every name of a v2 body, as `str` (found by hash, then compared), each held
 * (a reference) until `seen_free`. */
#define SEEN_ON_STACK 128
typedef struct {
    PyObject **slots;
    size_t mask, count;
    int by_name;
    PyObject *on_stack[SEEN_ON_STACK];
} Seen;

/* A `str`'s hash: the one it keeps once computed (every name kept by position has it). */
static Py_hash_t
hash_of(PyObject *name)
{
    Py_hash_t hash = ((PyASCIIObject *)name)->hash;
    return hash != -1 ? hash : PyObject_Hash(name);
}

static size_t
slot_of(const Seen *seen, PyObject *entry, size_t mask)
{
    size_t key = seen->by_name ? (size_t)hash_of(entry) : (size_t)((uintptr_t)entry >> 4);
    return (size_t)(key * 0x9E3779B97F4A7C15u) & mask;
}

/* 1 when `entry` is new (now added), 0 when it was there, -1 with an exception set. */
static int
seen_add(Seen *seen, PyObject *entry)
{
    if (2 * (seen->count + 1) > seen->mask + 1) {  /* at most half full: double */
        size_t size = 2 * (seen->mask + 1);
        PyObject **slots = PyMem_Calloc(size, sizeof(PyObject *));
        if (slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i <= seen->mask; i++) {
            PyObject *old = seen->slots[i];
            if (old != NULL) {
                size_t j = slot_of(seen, old, size - 1);
                while (slots[j] != NULL)
                    j = (j + 1) & (size - 1);
                slots[j] = old;
            }
        }
        if (seen->slots != seen->on_stack)
            PyMem_Free(seen->slots);
        seen->slots = slots;
        seen->mask = size - 1;
    }
    size_t i = slot_of(seen, entry, seen->mask);
    while (seen->slots[i] != NULL) {
        PyObject *there = seen->slots[i];
        if (there == entry)
            return 0;
        if (seen->by_name) {
            int equal = PyUnicode_Compare(there, entry);
            if (equal == -1 && PyErr_Occurred())
                return -1;
            if (equal == 0)
                return 0;
        }
        i = (i + 1) & seen->mask;
    }
    if (seen->by_name)
        Py_INCREF(entry);
    seen->slots[i] = entry;
    seen->count++;
    return 1;
}

static void
seen_init(Seen *seen, int by_name)
{
    memset(seen->on_stack, 0, sizeof seen->on_stack);
    seen->slots = seen->on_stack;
    seen->mask = SEEN_ON_STACK - 1;
    seen->count = 0;
    seen->by_name = by_name;
}

static void
seen_free(Seen *seen)
{
    if (seen->by_name)
        for (size_t i = 0; i <= seen->mask; i++)
            Py_XDECREF(seen->slots[i]);
    if (seen->slots != seen->on_stack)
        PyMem_Free(seen->slots);
}

/* One feature's term of a linear model's sum: `weight * ((x - mean) / std)` added to *sum, as
 * `learners/_linear_pass.c`'s `dot_standardized` adds it, when `params` holds `key` (x: the
 * number, an integer as float(int), which Python's arithmetic with a float mean does). 1 when
 * added or not held; 0 for an entry not three floats with a std that is not 0, or a name
 * given twice (`seen`); -1 with an exception set. */
static int
add_term(PyObject *params, PyObject *key, const Number *number, Seen *seen, double *sum)
{
    PyObject *entry = PyDict_GetItemWithError(params, key);  /* borrowed */
    if (entry == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 3)
        return 0;
    PyObject *mean = PyTuple_GET_ITEM(entry, 0), *std = PyTuple_GET_ITEM(entry, 1),
             *weight = PyTuple_GET_ITEM(entry, 2);
    if (!PyFloat_CheckExact(mean) || !PyFloat_CheckExact(std) || !PyFloat_CheckExact(weight)
        || PyFloat_AS_DOUBLE(std) == 0.0)
        return 0;
    int added = seen_add(seen, entry);
    if (added <= 0)
        return added;
    double x = number->is_float ? number->real : (double)number->integer;
    *sum += PyFloat_AS_DOUBLE(weight) * ((x - PyFloat_AS_DOUBLE(mean)) / PyFloat_AS_DOUBLE(std));
    return 1;
}

/* `max_features` of a call into *out: 1; 0 when it is negative (no body is read: the general
 * reading refuses even an empty one); -1 with an exception set (not an int). A limit past
 * Py_ssize_t's range is no limit. */
static int
limit_of(PyObject *arg, Py_ssize_t *out)
{
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (value == -1 && !overflow && PyErr_Occurred())
        return -1;
    if (overflow > 0 || value > PY_SSIZE_T_MAX) {
        *out = PY_SSIZE_T_MAX;
        return 1;
    }
    if (overflow < 0 || value < 0)
        return 0;
    *out = (Py_ssize_t)value;
    return 1;
}

static const char *
skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    return p;
}

static const Text FEATURES = TEXT("\"features\"");

/* The commonest `/v1` predict body, `{"features": {name: number, ...}}` alone, with any JSON
 * whitespace between its tokens: its features into `row` (a new dict) when `params` is NULL,
 * else the sum `read_dot` adds for them into *acc (the features never built). Each number is
 * read as `read_value` reads it (`scan_number`): in `row`, an integer literal is an `int` and
 * any other a float, as orjson reads them. 1 read; 0 left to the general reading (another key,
 * a name with an escape, a control character or a byte past ASCII, a number this reader leaves
 * to the others, a name given twice (orjson keeps the last value at the first place; in the
 * sum, a known one), more than `max_features` names, an entry of `params` not three floats
 * with a std that is not 0, any other byte); -1 with an exception set. */
static int
read_features_body(PyObject *raw, Py_ssize_t max_features, PyObject *row, PyObject *params,
                   double *acc)
{
    const char *p = PyBytes_AS_STRING(raw);
    const char *end = p + PyBytes_GET_SIZE(raw);

    p = skip_space(p, end);
    if (p >= end || *p++ != '{')
        return 0;
    p = skip_space(p, end);
    if (!starts(p, end, FEATURES))
        return 0;
    p = skip_space(p + FEATURES.size, end);
    if (p >= end || *p++ != ':')
        return 0;
    p = skip_space(p, end);
    if (p >= end || *p++ != '{')
        return 0;
    p = skip_space(p, end);

    Seen seen;
    seen_init(&seen, 0);
    int outcome = 0;
    double sum = 0.0;
    Py_ssize_t n = 0;
    if (p < end && *p == '}')
        p++;  /* no features */
    else
        for (;;) {
            if (p >= end || *p != '"')
                goto done;
            const char *name = ++p;
            while (p < end && *p != '"') {
                unsigned char c = (unsigned char)*p;
                if (c < 0x20 || c == '\\' || c >= 0x80)
                    goto done;
                p++;
            }
            if (p >= end)
                goto done;
            Py_ssize_t size = p - name;
            p = skip_space(p + 1, end);
            if (p >= end || *p++ != ':')
                goto done;
            p = skip_space(p, end);
            Number number;
            if (!scan_number(&p, end, &number) || ++n > max_features)
                goto done;
            PyObject *key = name_at(kept_features, n - 1, name, size);
            if (key == NULL)
                goto fail;
            int added = row != NULL ? add_value(row, key, &number, 1, n)
                                    : add_term(params, key, &number, &seen, &sum);
            Py_DECREF(key);
            if (added < 0)
                goto fail;
            if (added == 0)
                goto done;
            p = skip_space(p, end);
            if (p < end && *p == ',') {
                p = skip_space(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            goto done;
        }
    p = skip_space(p, end);
    if (p >= end || *p++ != '}')
        goto done;
    if (skip_space(p, end) != end)
        goto done;
    *acc = sum;
    outcome = 1;
    goto done;
fail:
    outcome = -1;
done:
    seen_free(&seen);
    return outcome;
}

/* A body reader of this file (`read_features_body`, `read_row_body`): into `row`, or the sum
 * into *acc with `params`; 1 read, 0 left to the others, -1 with an exception set. */
typedef int (*BodyReader)(PyObject *, Py_ssize_t, PyObject *, PyObject *, double *);

/* What a reader reads of `raw` as a new dict, under the limit `limit` (a call's argument):
 * the dict, None when left to the others (or for a negative limit), NULL with an exception. */
static PyObject *
read_as_dict(BodyReader read, PyObject *raw, PyObject *limit)
{
    Py_ssize_t max_features;
    int limited = limit_of(limit, &max_features);
    if (limited < 0)
        return NULL;
    if (limited == 0)
        Py_RETURN_NONE;
    PyObject *row = PyDict_New();
    if (row == NULL)
        return NULL;
    double unused;
    int outcome = read(raw, max_features, row, NULL, &unused);
    if (outcome == 1)
        return row;
    Py_DECREF(row);
    if (outcome < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The sum a reader adds for `raw` with `params`, under the limit `limit`, as a float; None
 * when left to the others (or for a negative limit), NULL with an exception. */
static PyObject *
read_as_sum(BodyReader read, PyObject *raw, PyObject *params, PyObject *limit)
{
    Py_ssize_t max_features;
    int limited = limit_of(limit, &max_features);
    if (limited < 0)
        return NULL;
    if (limited == 0)
        Py_RETURN_NONE;
    double acc;
    int outcome = read(raw, max_features, NULL, params, &acc);
    if (outcome < 0)
        return NULL;
    if (outcome == 0)
        Py_RETURN_NONE;
    return PyFloat_FromDouble(acc);
}

/* read_dot(raw, params, max_features) -> float | None: the sum a served linear model adds for
 * the features of a `/v1` predict body, read from its bytes without building them.
 *
 * `params` maps a feature's name to `(mean, std, weight)` (`learners.linear`): the sum is
 * `learners/_linear_pass.c`'s `dot_standardized` of the features orjson reads there, float for
 * float: `weight * ((x - mean) / std)` added in the body's order from 0.0, for the names
 * `params` holds (an integer as `float(int)`, which Python's arithmetic with a float mean
 * does). None, for the general reading to answer, for any body `read_features_body` leaves to
 * it. */
static PyObject *
read_dot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "read_dot(raw: bytes, params: dict, max_features: int)");
        return NULL;
    }
    return read_as_sum(read_features_body, args[0], args[1], args[2]);
}

/* read_features(raw, max_features) -> dict | None: the features of a `/v1` predict body as the
 * general reading gives them (orjson: the same names, order, types and numbers), read from its
 * bytes; None for any body `read_features_body` leaves to it. */
static PyObject *
read_features(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_features(raw: bytes, max_features: int)");
        return NULL;
    }
    return read_as_dict(read_features_body, args[0], args[1]);
}

/* The commonest v2 infer body (see the top of this file): its row into `row` (a new dict) when
 * `params` is NULL, else the sum `read_dot` adds for it into *acc (the row's values, in its
 * order, never built; `row` is then NULL, the names kept in a `Seen` by value: a name given
 * twice, known or not, leaves the body to the general reading, which refuses it). 1 read; 0
 * left to the others; -1 with an exception set. */
static int
read_row_body(PyObject *raw, Py_ssize_t max_features, PyObject *row, PyObject *params,
              double *acc)
{
    const char *p = PyBytes_AS_STRING(raw);
    const char *end = p + PyBytes_GET_SIZE(raw);

    int layout = starts(p, end, PREFIX[0]) ? 0 : starts(p, end, PREFIX[1]) ? 1 : -1;
    if (layout < 0)
        return 0;
    p += PREFIX[layout].size;
    if (end - p < SUFFIX.size || memcmp(end - SUFFIX.size, SUFFIX.text, (size_t)SUFFIX.size))
        return 0;
    const char *last = end - SUFFIX.size;  /* where the last value's ']' must be */

    Seen seen, names;  /* `names`: read_row_dot's every name (read_row's row finds a twice) */
    seen_init(&seen, 0);
    if (params != NULL)
        seen_init(&names, 1);
    int outcome = 0, kind = -1;
    double sum = 0.0;
    Py_ssize_t n = 0;
    for (;;) {
        if (p >= last || *p != '"')
            goto done;
        const char *name = ++p;
        while (p < last && *p != '"') {
            unsigned char c = (unsigned char)*p;
            if (c < 0x20 || c == '\\')
                goto done;
            p++;
        }
        if (p >= last)
            goto done;
        PyObject *key = name_at(kept_names, n, name, p - name);
        if (key == NULL) {
            PyErr_Clear();
            goto done;
        }
        p++;
        if (kind < 0) {
            for (int k = 0; k < 4 && kind < 0; k++)
                if (starts(p, last, MIDDLE[layout][k]))
                    kind = k;
        }
        else if (!starts(p, last, MIDDLE[layout][kind]))
            kind = -2;  /* another datatype than the first tensor's */
        Number number;
        if (kind >= 0)
            p += MIDDLE[layout][kind].size;
        if (kind < 0 || !read_value(&p, end, kind == INT64_KIND, OVERFLOW[kind], &number)
            || ++n > max_features) {
            Py_DECREF(key);
            goto done;
        }
        int added;
        if (params == NULL)
            added = add_value(row, key, &number, kind == INT64_KIND, n);
        else if ((added = seen_add(&names, key)) == 1)
            added = add_term(params, key, &number, &seen, &sum);
        Py_DECREF(key);
        if (added < 0)
            goto fail;
        if (added == 0)
            goto done;
        if (p == last) {
            *acc = sum;
            outcome = 1;
            goto done;
        }
        if (!starts(p, last, BETWEEN[layout]))
            goto done;
        p += BETWEEN[layout].size;
    }
fail:
    outcome = -1;
done:
    seen_free(&seen);
    if (params != NULL)
        seen_free(&names);
    return outcome;
}

static PyObject *
read_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "read_row(raw: bytes, max_features: int)");
        return NULL;
    }
    return read_as_dict(read_row_body, args[0], args[1]);
}

/* read_row_dot(raw, params, max_features) -> float | None: `read_dot`'s sum for the row
 * `read_row` reads, from the bytes (None where `read_row` gives None, or for a name twice,
 * or an entry of `params` that `read_dot` refuses). */
static PyObject *
read_row_dot(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyBytes_Check(args[0]) || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "read_row_dot(raw: bytes, params: dict, max_features: int)");
        return NULL;
    }
    return read_as_sum(read_row_body, args[0], args[1], args[2]);
}

static PyMethodDef methods[] = {
    {"read_row", (PyCFunction)(void (*)(void))read_row, METH_FASTCALL,
     "read_row(raw, max_features) -> dict | None: the row of the commonest v2 infer body."},
    {"read_dot", (PyCFunction)(void (*)(void))read_dot, METH_FASTCALL,
     "read_dot(raw, params, max_features) -> float | None: a served linear model's sum for the "
     "features of the commonest `/v1` predict body."},
    {"read_features", (PyCFunction)(void (*)(void))read_features, METH_FASTCALL,
     "read_features(raw, max_features) -> dict | None: the features of the commonest `/v1` "
     "predict body."},
    {"read_row_dot", (PyCFunction)(void (*)(void))read_row_dot, METH_FASTCALL,
     "read_row_dot(raw, params, max_features) -> float | None: a served linear model's sum for "
     "the row of the commonest v2 infer body."},
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
