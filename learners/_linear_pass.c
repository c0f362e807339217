/* A standard scaler's learning pass, and a linear model's dot product with the scaled features,
 * in C, equal to River's to the bit.
 *
 * `learners.linear_learning.LinearLearning.learn_one` calls `scale_learn(x, counts, means,
 * variances)` first. It does what its Python loop does (River's `StandardScaler.learn_one`,
 * then `transform_one`, in one pass), per feature of `x`, in `x`'s order:
 *
 *     n = counts[i] + 1; counts[i] = n
 *     old = means[i]; mean = means[i] = old + (xi - old) / n
 *     var = variances[i]; var = variances[i] = var + ((xi - old) * (xi - mean) - var) / n
 *     scaled[i] = (xi - mean) / var**0.5 if var else 0.0
 *
 * and returns `scaled`; or it returns None having changed nothing, and the Python loop learns,
 * when anything is not what that loop can be repeated on in C doubles:
 * - `x` is not exactly a dict, holds more than MAX_FEATURES features, or a name that is not
 *   exactly a str (whose hashing and comparing run no Python code);
 * - `counts` is not exactly a `collections.Counter`, `means` or `variances` not exactly a
 *   `collections.defaultdict` of `float`;
 * - a value of `x` is neither a float nor an int within ±2**53 (a bool, a string, a numpy
 *   number, a larger int: the Python loop gives each its own behaviour, its error included);
 * - a count is not an int below 2**53, a mean or a variance not a float, `means` is
 *   `variances`;
 * - a NaN in a value, a stored statistic or a new one: which NaN an operation on two NaNs
 *   gives depends on the order of its operands in the machine code (CPython's own differs
 *   between its generic and its specialised addition), and a snapshot keeps its bits. Without
 *   NaN operands, every NaN an operation makes is the processor's default one.
 *
 * A lookup may run Python code (a stored key of another type with the same hash, compared):
 * the names and the stored statistics are held until the pass ends, and a stored float is
 * changed in place only when it is still the dict's and nothing else holds it.
 *
 * Why the numbers are Python's: each float operation above is one IEEE 754 operation in
 * Python (`float_add`, `float_sub`, `float_mul`, `float_div`), repeated here in the same order
 * on the same doubles; an int within ±2**53 converts to the same double either way; `var**0.5`
 * is libm's `pow`, which CPython's `float_pow` calls for a positive finite base (called
 * through a volatile pointer, so that no compiler turns it into `sqrt`, which may round
 * otherwise); any other variance (infinite, or negative in a state set by hand) goes through
 * Python's own power
 * and division (`PyNumber_Power`, `PyNumber_TrueDivide`) on float objects. A missing count
 * reads 0 and a missing mean or variance 0.0, as `Counter` and `defaultdict(float)` answer;
 * each key is then stored once, where Python's read would have stored it first (a
 * `defaultdict` stores its default at the read), so the dicts keep Python's order.
 *
 * Built by `pip install` (pyproject.toml, an optional extension): without a C compiler the
 * Python loop alone learns, with the same numbers.
 * `tests/learners/test_linear_learning.py` compares both with River after every sample.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "_exact_number.h"

#define MAX_FEATURES 512

static PyTypeObject *counter_type, *defaultdict_type;
static PyObject *default_factory_name, *float_type, *one_half, *zero;
static double (*volatile power)(double, double) = pow;

/* Whether `d` is exactly a defaultdict whose default is float. -1 with an error set. */
static int
float_defaultdict(PyObject *d)
{
    if (Py_TYPE(d) != defaultdict_type)
        return 0;
    PyObject *factory = PyObject_GetAttr(d, default_factory_name);
    if (factory == NULL)
        return -1;
    int is_float = factory == float_type;
    Py_DECREF(factory);
    return is_float;
}

/* Whether `means` and `variances` are both exactly defaultdicts of float (a standard scaler's
 * statistics as River keeps them). -1 with an error set. */
static int
standard_statistics(PyObject *means, PyObject *variances)
{
    int ok = float_defaultdict(means);
    return ok == 1 ? float_defaultdict(variances) : ok;
}

/* The stored float of `key` in `d` (borrowed, in `stored`; NULL when missing) and its value
 * (0.0 when missing, in `out`): 1; 0 when the stored value is not a float; -1 with an error
 * set. */
static int
stored_float(PyObject *d, PyObject *key, PyObject **stored, double *out)
{
    PyObject *value = *stored = PyDict_GetItemWithError(d, key);
    if (value == NULL) {
        if (PyErr_Occurred())
            return -1;
        *out = 0.0;
        return 1;
    }
    if (!PyFloat_CheckExact(value))
        return 0;
    *out = PyFloat_AS_DOUBLE(value);
    return 1;
}

/* d[key] = value, where `stored` is d[key] now (NULL: none), also held by the caller. A float
 * that only `d` (and the caller) refer to takes the new value in place: nothing else can see
 * it, and the dict keeps its entry. */
static int
store_float(PyObject *d, PyObject *key, PyObject *stored, double value)
{
    if (stored != NULL && Py_REFCNT(stored) == 2 && PyDict_GetItem(d, key) == stored) {
        ((PyFloatObject *)stored)->ob_fval = value;
        return 0;
    }
    PyObject *f = PyFloat_FromDouble(value);
    if (f == NULL)
        return -1;
    int failed = PyDict_SetItem(d, key, f);
    Py_DECREF(f);
    return failed;
}

/* `(xi - mean) / var**0.5` with Python's own power and division (a variance that is not
 * positive and finite), as a new reference. */
static PyObject *
scaled_in_python(double centred, double var)
{
    PyObject *base = PyFloat_FromDouble(var), *numerator = NULL, *root = NULL, *result = NULL;
    if (base == NULL)
        return NULL;
    root = PyNumber_Power(base, one_half, Py_None);
    if (root == NULL)
        goto done;
    numerator = PyFloat_FromDouble(centred);
    if (numerator == NULL)
        goto done;
    result = PyNumber_TrueDivide(numerator, root);
done:
    Py_DECREF(base);
    Py_XDECREF(root);
    Py_XDECREF(numerator);
    return result;
}

static PyObject *
scale_learn(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scale_learn(x, counts, means, variances)");
        return NULL;
    }
    PyObject *x = args[0], *counts = args[1], *means = args[2], *variances = args[3];
    if (!PyDict_CheckExact(x) || Py_TYPE(counts) != counter_type || means == variances)
        Py_RETURN_NONE;
    int ok = standard_statistics(means, variances);
    if (ok < 0)
        return NULL;
    Py_ssize_t size = PyDict_GET_SIZE(x);
    if (!ok || size > MAX_FEATURES)
        Py_RETURN_NONE;

    /* Made first: a dict's allocation may run the garbage collector (and finalizers). */
    PyObject *scaled = PyDict_New();
    if (scaled == NULL)
        return NULL;
    /* First every read, and nothing written unless all can be repeated in C. A lookup may run
     * Python code (a stored key of another type, with the same hash, compared): the names and
     * the stored statistics are held until the end, so none can be freed under this pass. */
    PyObject *keys[MAX_FEATURES], *stored_means[MAX_FEATURES], *stored_vars[MAX_FEATURES];
    double xs[MAX_FEATURES], olds[MAX_FEATURES], vars[MAX_FEATURES];
    double new_means[MAX_FEATURES], new_vars[MAX_FEATURES], new_scaled[MAX_FEATURES];
    long long ns[MAX_FEATURES];
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *value, *result = NULL;
    int error = 0;
    while (PyDict_Next(x, &pos, &key, &value)) {
        if (k == MAX_FEATURES || !PyUnicode_CheckExact(key) || !exact_number(value, &xs[k])
            || isnan(xs[k]))
            goto done;
        keys[k] = Py_NewRef(key);
        stored_means[k] = stored_vars[k] = NULL;
        k++;
        PyObject *count = PyDict_GetItemWithError(counts, key);
        if (count == NULL) {
            if (PyErr_Occurred())
                goto failed;
            ns[k - 1] = 1;
        }
        else {
            if (!PyLong_CheckExact(count))
                goto done;
            int overflow;
            long long c = PyLong_AsLongLongAndOverflow(count, &overflow);
            if (overflow || c < 0 || c >= EXACT_INT)
                goto done;
            ns[k - 1] = c + 1;
        }
        int read = stored_float(means, key, &stored_means[k - 1], &olds[k - 1]);
        Py_XINCREF(stored_means[k - 1]);
        if (read == 1) {
            read = stored_float(variances, key, &stored_vars[k - 1], &vars[k - 1]);
            Py_XINCREF(stored_vars[k - 1]);
        }
        if (read < 0)
            goto failed;
        if (read == 0)
            goto done;
    }
    if (PyDict_GET_SIZE(x) != k)  /* changed while it was read */
        goto done;

    /* Then every new number. A NaN anywhere leaves the whole sample to Python: which NaN an
     * operation on two NaNs gives depends on the order of its operands in the machine code
     * (CPython's own differs from one call to the next), and the pickled state keeps it. */
    for (Py_ssize_t j = 0; j < k; j++) {
        double xi = xs[j], old = olds[j], n = (double)ns[j];
        double mean = old + (xi - old) / n;
        double var = vars[j];
        var = var + ((xi - old) * (xi - mean) - var) / n;
        double s = 0.0;
        if (var > 0.0 && isfinite(var))
            s = (xi - mean) / power(var, 0.5);
        if (isnan(old) || isnan(vars[j]) || isnan(mean) || isnan(var) || isnan(s))
            goto done;
        new_means[j] = mean;
        new_vars[j] = var;
        new_scaled[j] = s;
    }

    for (Py_ssize_t j = 0; j < k; j++) {
        double mean = new_means[j], var = new_vars[j];
        PyObject *count = PyLong_FromLongLong(ns[j]), *s;
        if (var == 0.0 || (var > 0.0 && isfinite(var)))
            s = PyFloat_FromDouble(new_scaled[j]);
        else  /* infinite or negative (a state set by hand): Python's own power and division */
            s = scaled_in_python(xs[j] - mean, var);
        int failed = count == NULL || s == NULL || PyDict_SetItem(counts, keys[j], count) < 0
            || store_float(means, keys[j], stored_means[j], mean) < 0
            || store_float(variances, keys[j], stored_vars[j], var) < 0
            || PyDict_SetItem(scaled, keys[j], s) < 0;
        Py_XDECREF(count);
        Py_XDECREF(s);
        if (failed)
            goto failed;
    }
    result = Py_NewRef(scaled);
    goto done;
failed:
    error = 1;
done:  /* `result` is the scaled features, or NULL: left to the Python loop (nothing written)
        * or, with `error`, an exception set */
    Py_DECREF(scaled);
    for (Py_ssize_t j = 0; j < k; j++) {
        Py_DECREF(keys[j]);
        Py_XDECREF(stored_means[j]);
        Py_XDECREF(stored_vars[j]);
    }
    if (error)
        return NULL;
    if (result == NULL)
        Py_RETURN_NONE;
    return result;
}

/* `acc += weight(key, 0.0) * scaled`, the scaled value of `xi` read as `dot_scaled` reads it
 * (storing 0.0 for a missing variance, and for a missing mean it reads): 1; 0 when the
 * Python loop must answer; -1 with an error set. */
static int
add_term(PyObject *key, double xi, PyObject *means, PyObject *variances, PyObject *weight,
         double *acc)
{
    double var, mean, scaled = 0.0;
    PyObject *stored;
    int read = stored_float(variances, key, &stored, &var);
    if (read <= 0 || isnan(var))
        return read < 0 ? -1 : 0;
    if (stored == NULL && store_float(variances, key, NULL, 0.0) < 0)
        return -1;
    if (var != 0.0) {
        if (!(var > 0.0 && isfinite(var)))
            return 0;
        read = stored_float(means, key, &stored, &mean);
        if (read <= 0 || isnan(mean))
            return read < 0 ? -1 : 0;
        if (stored == NULL && store_float(means, key, NULL, 0.0) < 0)
            return -1;
        scaled = (xi - mean) / power(var, 0.5);
    }
    PyObject *call[2] = {key, zero};
    PyObject *w = PyObject_Vectorcall(weight, call, 2, NULL);
    if (w == NULL)
        return -1;
    int is_float = PyFloat_CheckExact(w) && !isnan(PyFloat_AS_DOUBLE(w));
    if (is_float)
        *acc += PyFloat_AS_DOUBLE(w) * scaled;
    Py_DECREF(w);
    return is_float;
}

/* `LinearLearning._raw_dot`'s sum before the intercept: per feature of `x`, in `x`'s order,
 *
 *     var = variances[i]
 *     acc += weight(i, 0.0) * ((xi - means[i]) / var**0.5 if var else 0.0)
 *
 * from acc = 0.0, a `defaultdict` storing 0.0 for a missing variance (and for a missing mean
 * it reads), as the Python loop's reads do. None when that loop must answer instead: the
 * arguments are not of the kinds `scale_learn` takes, a weight is not a float, or a variance
 * is not positive and finite; the loop then reads what was stored here and stores nothing
 * more, so its state and its answer are the same. */
static PyObject *
dot_scaled(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "dot_scaled(x, means, variances, weight)");
        return NULL;
    }
    PyObject *x = args[0], *means = args[1], *variances = args[2], *weight = args[3];
    if (!PyDict_CheckExact(x) || means == variances)
        Py_RETURN_NONE;
    int ok = standard_statistics(means, variances);
    if (ok < 0)
        return NULL;
    if (!ok)
        Py_RETURN_NONE;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    Py_ssize_t size = PyDict_GET_SIZE(x);
    while (PyDict_Next(x, &pos, &key, &value)) {  /* every name and value first */
        double xi;
        if (!PyUnicode_CheckExact(key) || !exact_number(value, &xi) || isnan(xi))
            Py_RETURN_NONE;
    }
    double acc = 0.0;
    pos = 0;
    while (PyDict_Next(x, &pos, &key, &value)) {
        double xi = 0.0;
        if (PyDict_GET_SIZE(x) != size || !exact_number(value, &xi))  /* changed by a lookup */
            Py_RETURN_NONE;
        Py_INCREF(key);  /* a lookup may run Python code, which must not free it under us */
        int added = add_term(key, xi, means, variances, weight, &acc);
        Py_DECREF(key);
        if (added < 0)
            return NULL;
        if (added == 0)
            Py_RETURN_NONE;
    }
    return PyFloat_FromDouble(acc);
}

/* `learners.linear`'s served sum: per feature of `x`, in `x`'s order, `p = params.get(i)`, and
 * where it is not None, `acc += p[2] * ((xi - p[0]) / p[1])`, from acc = 0.0; `params` maps a
 * feature to its `(mean, std, weight)` floats. None when that loop must answer instead (it then
 * reads nothing stored here, and stores nothing): `x` is not exactly a dict, a name is not a
 * str, a value not a float or an int within ±2**53, an entry of `params` not three floats. */
static PyObject *
dot_standardized(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "dot_standardized(x, params: dict)");
        return NULL;
    }
    PyObject *x = args[0], *params = args[1];
    if (!PyDict_CheckExact(x))
        Py_RETURN_NONE;
    double acc = 0.0;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(x, &pos, &key, &value)) {
        double xi;
        if (!PyUnicode_CheckExact(key) || !exact_number(value, &xi) || isnan(xi))
            Py_RETURN_NONE;
        PyObject *p = PyDict_GetItemWithError(params, key);
        if (p == NULL) {
            if (PyErr_Occurred())
                return NULL;
            continue;
        }
        if (!PyTuple_CheckExact(p) || PyTuple_GET_SIZE(p) != 3)
            Py_RETURN_NONE;
        PyObject *mean = PyTuple_GET_ITEM(p, 0), *std = PyTuple_GET_ITEM(p, 1),
                 *weight = PyTuple_GET_ITEM(p, 2);
        if (!PyFloat_CheckExact(mean) || !PyFloat_CheckExact(std) || !PyFloat_CheckExact(weight)
            || PyFloat_AS_DOUBLE(std) == 0.0)
            Py_RETURN_NONE;
        acc += PyFloat_AS_DOUBLE(weight)
            * ((xi - PyFloat_AS_DOUBLE(mean)) / PyFloat_AS_DOUBLE(std));
    }
    return PyFloat_FromDouble(acc);
}

static PyMethodDef methods[] = {
    {"scale_learn", (PyCFunction)(void (*)(void))scale_learn, METH_FASTCALL,
     "scale_learn(x, counts, means, variances) -> dict | None: a standard scaler's learning "
     "pass, River's to the bit (see _linear_pass.c)."},
    {"dot_scaled", (PyCFunction)(void (*)(void))dot_scaled, METH_FASTCALL,
     "dot_scaled(x, means, variances, weight) -> float | None: the weights' dot product with "
     "the scaled features (see _linear_pass.c)."},
    {"dot_standardized", (PyCFunction)(void (*)(void))dot_standardized, METH_FASTCALL,
     "dot_standardized(x, params) -> float | None: a served linear model's sum (see "
     "_linear_pass.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "learners._linear_pass",
    .m_doc = "A standard scaler's learning pass in C (see _linear_pass.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__linear_pass(void)
{
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return NULL;
    counter_type = (PyTypeObject *)PyObject_GetAttrString(collections, "Counter");
    defaultdict_type = (PyTypeObject *)PyObject_GetAttrString(collections, "defaultdict");
    Py_DECREF(collections);
    if (counter_type == NULL || defaultdict_type == NULL)
        return NULL;
    default_factory_name = PyUnicode_InternFromString("default_factory");
    float_type = (PyObject *)&PyFloat_Type;
    one_half = PyFloat_FromDouble(0.5);
    zero = PyFloat_FromDouble(0.0);
    if (default_factory_name == NULL || one_half == NULL || zero == NULL)
        return NULL;
    return PyModule_Create(&module);
}
