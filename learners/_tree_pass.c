/* A Hoeffding tree leaf's Gaussian observers, updated and read in C, equal to River's to the bit.
 *
 * `learners.tree_learning` calls these two from a learning `HoeffdingTreeClassifier`'s leaf:
 *
 * `update_gaussians(splitters, x, y, w, disabled, splitter_type)` does what the leaf's
 * `update_splitters` does for each feature of `x`, in `x`'s order, as long as the feature's
 * observer is exactly a `GaussianSplitter` that has seen class `y` already:
 *
 *     if name in disabled: skip
 *     if value is None: skip                       (GaussianSplitter.update)
 *     if value < min_per_class[y]: min_per_class[y] = value
 *     if value > max_per_class[y]: max_per_class[y] = value
 *     mean_old = mean._mean                        (Var.update of the class's Gaussian)
 *     mean.n += w                                  (Mean.update)
 *     mean._mean += (w / mean.n) * (value - mean._mean)
 *     var._S += w * (value - mean_old) * (value - mean._mean)
 *
 * and returns how many features it did: it stops, having changed nothing of that feature, at
 * the first one it cannot repeat in C doubles, which the leaf's own Python method then learns
 * with the rest (a feature without an observer, a class new to it, a nominal feature, a value
 * that is not a finite float or an int within ±2**53, state of other types, a NaN).
 *
 * `add_log_densities(votes, classes, x, splitters, splitter_type)` adds, for each class of
 * `classes` (whose prior `votes` holds), the log density of each feature of `x` that has an
 * observer, in the observers' order, as `tree.utils.do_naive_bayes_prediction` does through
 * `GaussianSplitter.cond_log_proba` and `proba.Gaussian.log_pdf`:
 *
 *     variance = var._S / (mean.n - var.ddof)         when mean.n > var.ddof
 *     log_p = (value - mean._mean) ** 2 / (-2.0 * variance) - HALF_LOG_TAU - 0.5 * log(variance)
 *                                                     when variance > 0.0, else -inf
 *     votes[c] += log_p                               when log_p > -inf
 *
 * It returns True having written the sums into `votes`, or False having changed nothing when
 * any observer or state is not of those exact types, a value not a finite float or int within
 * ±2**53, or a number NaN (the caller then asks River's own function).
 *
 * Why the numbers are Python's: each operation above is one IEEE 754 operation in Python
 * (`float_add`, `float_sub`, `float_mul`, `float_div`), repeated here in the same order on the
 * same doubles; an int within ±2**53 converts to the same double either way; `** 2` is libm's
 * `pow` on the absolute value, as CPython's `float_pow` calls it for a finite base (through a
 * volatile pointer, so that no compiler turns it into a product), and `math.log` of a positive
 * number libm's `log`. `HALF_LOG_TAU` is River's own constant, passed in by the caller.
 * Compiled without contraction of a * b + c into one rounding (pyproject.toml).
 *
 * Built by `pip install` (pyproject.toml, an optional extension): without a C compiler River's
 * own methods learn, with the same numbers. `tests/learners/test_tree_learning.py` compares
 * both with River after every sample.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "_exact_number.h"

#define MAX_FEATURES 512
#define MAX_CLASSES 64

static double (*volatile power)(double, double) = pow;
static double (*volatile logarithm)(double) = log;
static PyObject *s_dists, *s_mins, *s_maxs, *s_var, *s_mean, *s_n, *s_value, *s_S, *s_ddof;
static PyTypeObject *gaussian_type, *var_type, *mean_type;
static double half_log_tau;

/* `exact_number`, finite: 0 for an infinity or a NaN too. */
static int
number(PyObject *value, double *out)
{
    return exact_number(value, out) && isfinite(*out);
}

/* A float attribute of `obj` (exactly a float, not NaN) in `out`: 1; 0 for anything else, -1
 * with an error set. */
static int
float_attr(PyObject *obj, PyObject *name, double *out)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL)
        return -1;
    int ok = PyFloat_CheckExact(value) && !isnan(PyFloat_AS_DOUBLE(value));
    if (ok)
        *out = PyFloat_AS_DOUBLE(value);
    Py_DECREF(value);
    return ok;
}

/* The class's Gaussian `g` read into its Var and Mean (new references), checked to be
 * exactly River's classes. 1, 0 (other types), -1 (error). */
static int
gaussian_parts(PyObject *g, PyObject **var, PyObject **mean)
{
    *var = *mean = NULL;
    if (Py_TYPE(g) != gaussian_type)
        return 0;
    *var = PyObject_GetAttr(g, s_var);
    if (*var == NULL)
        return -1;
    if (Py_TYPE(*var) != var_type)
        goto other;
    *mean = PyObject_GetAttr(*var, s_mean);
    if (*mean == NULL)
        goto fail;
    if (Py_TYPE(*mean) != mean_type)
        goto other;
    return 1;
other:
    Py_CLEAR(*var);
    Py_CLEAR(*mean);
    return 0;
fail:
    Py_CLEAR(*var);
    return -1;
}

/* The dict attribute `name` of `obj` (a new reference), or NULL: with an error set (-1 in
 * *status) or not a dict (0 in *status). */
static PyObject *
dict_attr(PyObject *obj, PyObject *name, int *status)
{
    PyObject *d = PyObject_GetAttr(obj, name);
    if (d == NULL) {
        *status = -1;
        return NULL;
    }
    if (!PyDict_CheckExact(d)) {
        Py_DECREF(d);
        *status = 0;
        return NULL;
    }
    return d;
}

/* Whether a key can be looked up without running Python code. */
static int
plain_key(PyObject *key)
{
    return PyUnicode_CheckExact(key) || PyLong_CheckExact(key) || PyBool_Check(key);
}

static int
set_float(PyObject *obj, PyObject *name, double value)
{
    PyObject *f = PyFloat_FromDouble(value);
    if (f == NULL)
        return -1;
    int rc = PyObject_SetAttr(obj, name, f);
    Py_DECREF(f);
    return rc;
}

/* One feature's update; 1 done, 0 not doable here (nothing changed), -1 error. */
static int
update_one(PyObject *splitter, PyObject *value, PyObject *y, double w)
{
    double v, n, mean_old, S;
    int status = 0, result = 0;
    PyObject *dists = NULL, *mins = NULL, *maxs = NULL, *var = NULL, *mean = NULL;
    if (!number(value, &v))
        return 0;
    if ((dists = dict_attr(splitter, s_dists, &status)) == NULL)
        return status;
    PyObject *g = PyDict_GetItemWithError(dists, y);  /* borrowed */
    if (g == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_INCREF(g);
    Py_SETREF(dists, g);  /* keep the Gaussian alive, not the dict */
    if ((mins = dict_attr(splitter, s_mins, &status)) == NULL
        || (maxs = dict_attr(splitter, s_maxs, &status)) == NULL) {
        result = status;
        goto done;
    }
    PyObject *low = PyDict_GetItemWithError(mins, y), *high = PyDict_GetItemWithError(maxs, y);
    if (low == NULL || high == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    double lo, hi;
    if (!number(low, &lo) || !number(high, &hi))
        goto done;
    if ((status = gaussian_parts(g, &var, &mean)) != 1) {
        result = status;
        goto done;
    }
    if ((status = float_attr(mean, s_n, &n)) != 1 || (status = float_attr(mean, s_value, &mean_old)) != 1
        || (status = float_attr(var, s_S, &S)) != 1) {
        result = status;
        goto done;
    }
    double n_new = n + w;
    if (n_new == 0.0)  /* Python's division raises: River's own method does */
        goto done;
    double mean_new = mean_old + (w / n_new) * (v - mean_old);
    double S_new = S + w * (v - mean_old) * (v - mean_new);
    if (isnan(n_new) || isnan(mean_new) || isnan(S_new))
        goto done;
    /* value < min, value > max: compared as Python compares an int and a float (exactly), on
     * the objects themselves */
    int below = PyObject_RichCompareBool(value, low, Py_LT);
    if (below < 0)
        goto error;
    if (below && PyDict_SetItem(mins, y, value) < 0)
        goto error;
    int above = PyObject_RichCompareBool(value, high, Py_GT);
    if (above < 0)
        goto error;
    if (above && PyDict_SetItem(maxs, y, value) < 0)
        goto error;
    if (set_float(mean, s_n, n_new) < 0 || set_float(mean, s_value, mean_new) < 0
        || set_float(var, s_S, S_new) < 0)
        goto error;
    result = 1;
    goto done;
error:
    result = -1;
done:
    Py_XDECREF(dists);
    Py_XDECREF(mins);
    Py_XDECREF(maxs);
    Py_XDECREF(var);
    Py_XDECREF(mean);
    return result;
}

static PyObject *
update_gaussians(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "update_gaussians takes 6 arguments");
        return NULL;
    }
    PyObject *splitters = args[0], *x = args[1], *y = args[2], *disabled = args[4];
    PyTypeObject *splitter_type = (PyTypeObject *)args[5];
    double w;
    Py_ssize_t done = 0;
    if (!PyDict_CheckExact(splitters) || !PyDict_CheckExact(x) || !plain_key(y)
        || !PyFloat_CheckExact(args[3]) || !PyAnySet_CheckExact(disabled)
        || !PyType_Check(args[5]))
        return PyLong_FromSsize_t(0);
    w = PyFloat_AS_DOUBLE(args[3]);
    if (!isfinite(w))
        return PyLong_FromSsize_t(0);
    Py_ssize_t pos = 0;
    PyObject *name, *value;
    while (PyDict_Next(x, &pos, &name, &value)) {
        if (!PyUnicode_CheckExact(name))
            break;
        Py_INCREF(name);
        Py_INCREF(value);
        int skip = PySet_Contains(disabled, name);
        int rc = 0;
        if (skip > 0) {
            rc = 1;
        }
        else if (skip == 0) {
            PyObject *splitter = PyDict_GetItemWithError(splitters, name);
            if (splitter != NULL && Py_TYPE(splitter) == splitter_type) {
                Py_INCREF(splitter);
                /* GaussianSplitter.update ignores a missing value (once the observer exists) */
                rc = value == Py_None ? 1 : update_one(splitter, value, y, w);
                Py_DECREF(splitter);
            }
            else if (PyErr_Occurred())
                rc = -1;
        }
        else
            rc = -1;
        Py_DECREF(name);
        Py_DECREF(value);
        if (rc < 0)
            return NULL;
        if (rc == 0)
            break;
        done++;
    }
    return PyLong_FromSsize_t(done);
}

/* log_p of `value` under the class's Gaussian `g`: 1 with it in *out (-inf when River's is),
 * 0 when not doable here, -1 on error. */
static int
log_density(PyObject *g, double v, double *out)
{
    PyObject *var = NULL, *mean = NULL, *ddof_obj = NULL;
    double n, S, mu;
    int status = gaussian_parts(g, &var, &mean);
    if (status != 1)
        return status;
    if ((status = float_attr(mean, s_n, &n)) != 1 || (status = float_attr(var, s_S, &S)) != 1
        || (status = float_attr(mean, s_value, &mu)) != 1)
        goto done;
    if ((ddof_obj = PyObject_GetAttr(var, s_ddof)) == NULL) {
        status = -1;
        goto done;
    }
    double ddof;
    if (!PyLong_CheckExact(ddof_obj) || !number(ddof_obj, &ddof)) {
        status = 0;
        goto done;
    }
    status = 1;
    *out = -INFINITY;
    if (n > ddof) {
        double variance = S / (n - ddof);
        if (isnan(variance)) {
            status = 0;
            goto done;
        }
        if (variance > 0.0) {
            double d = v - mu;
            double square = power(fabs(d), 2.0);
            if (!isfinite(square)) {  /* Python's power raises OverflowError: River's does */
                status = 0;
                goto done;
            }
            double log_p = square / (-2.0 * variance) - half_log_tau - 0.5 * logarithm(variance);
            if (isnan(log_p))
                status = 0;
            else
                *out = log_p;
        }
    }
done:
    Py_XDECREF(var);
    Py_XDECREF(mean);
    Py_XDECREF(ddof_obj);
    return status;
}

static PyObject *
add_log_densities(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "add_log_densities takes 5 arguments");
        return NULL;
    }
    PyObject *votes = args[0], *classes = args[1], *x = args[2], *splitters = args[3];
    PyTypeObject *splitter_type = (PyTypeObject *)args[4];
    if (!PyDict_CheckExact(votes) || !PyList_CheckExact(classes) || !PyDict_CheckExact(x)
        || !PyDict_CheckExact(splitters) || !PyType_Check(args[4]))
        Py_RETURN_FALSE;
    Py_ssize_t n_classes = PyList_GET_SIZE(classes);
    if (n_classes > MAX_CLASSES || PyDict_GET_SIZE(splitters) > MAX_FEATURES)
        Py_RETURN_FALSE;
    double sums[MAX_CLASSES];
    PyObject *dists_of[MAX_FEATURES];
    double values[MAX_FEATURES];
    Py_ssize_t used = 0, pos = 0;
    PyObject *name, *splitter, *result = Py_False;
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        PyObject *cls = PyList_GET_ITEM(classes, c);
        PyObject *prior = plain_key(cls) ? PyDict_GetItemWithError(votes, cls) : NULL;
        if (prior == NULL) {
            if (PyErr_Occurred())
                return NULL;
            Py_RETURN_FALSE;
        }
        if (!PyFloat_CheckExact(prior) || isnan(PyFloat_AS_DOUBLE(prior)))
            Py_RETURN_FALSE;
        sums[c] = PyFloat_AS_DOUBLE(prior);
    }
    /* The observers of the features in x, in the observers' order, with their values. */
    while (PyDict_Next(splitters, &pos, &name, &splitter)) {
        if (!PyUnicode_CheckExact(name))
            goto other;
        PyObject *value = PyDict_GetItemWithError(x, name);
        if (value == NULL) {
            if (PyErr_Occurred())
                goto error;
            continue;
        }
        if (Py_TYPE(splitter) != splitter_type || !number(value, &values[used]))
            goto other;
        int status;
        PyObject *dists = dict_attr(splitter, s_dists, &status);
        if (dists == NULL) {
            if (status < 0)
                goto error;
            goto other;
        }
        dists_of[used++] = dists;
    }
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        PyObject *cls = PyList_GET_ITEM(classes, c);
        double sum = sums[c];
        for (Py_ssize_t f = 0; f < used; f++) {
            PyObject *g = PyDict_GetItemWithError(dists_of[f], cls);  /* borrowed */
            if (g == NULL) {
                if (PyErr_Occurred())
                    goto error;
                continue;  /* cond_log_proba: -inf, not added */
            }
            Py_INCREF(g);
            double log_p = -INFINITY;
            int status = log_density(g, values[f], &log_p);
            Py_DECREF(g);
            if (status < 0)
                goto error;
            if (status == 0)
                goto other;
            if (log_p > -INFINITY)
                sum = sum + log_p;
        }
        if (isnan(sum))
            goto other;
        sums[c] = sum;
    }
    for (Py_ssize_t c = 0; c < n_classes; c++) {
        PyObject *f = PyFloat_FromDouble(sums[c]);
        if (f == NULL)
            goto error;
        int rc = PyDict_SetItem(votes, PyList_GET_ITEM(classes, c), f);
        Py_DECREF(f);
        if (rc < 0)
            goto error;
    }
    result = Py_True;
other:
    for (Py_ssize_t f = 0; f < used; f++)
        Py_DECREF(dists_of[f]);
    return Py_NewRef(result);
error:
    for (Py_ssize_t f = 0; f < used; f++)
        Py_DECREF(dists_of[f]);
    return NULL;
}

static PyObject *
configure(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyType_Check(args[0]) || !PyType_Check(args[1]) || !PyType_Check(args[2])
        || !PyFloat_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "configure(Gaussian, Var, Mean, HALF_LOG_TAU)");
        return NULL;
    }
    Py_XSETREF(gaussian_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(var_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(mean_type, (PyTypeObject *)Py_NewRef(args[2]));
    half_log_tau = PyFloat_AS_DOUBLE(args[3]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(Gaussian, Var, Mean, HALF_LOG_TAU): River's classes and constant."},
    {"update_gaussians", (PyCFunction)(void (*)(void))update_gaussians, METH_FASTCALL,
     "update_gaussians(splitters, x, y, w, disabled, GaussianSplitter) -> features done"},
    {"add_log_densities", (PyCFunction)(void (*)(void))add_log_densities, METH_FASTCALL,
     "add_log_densities(votes, classes, x, splitters, GaussianSplitter) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_tree_pass",
    "A Hoeffding tree leaf's Gaussian observers in C (learners/_tree_pass.c).", -1, methods,
};

PyMODINIT_FUNC
PyInit__tree_pass(void)
{
    if (!(s_dists = PyUnicode_InternFromString("_att_dist_per_class"))
        || !(s_mins = PyUnicode_InternFromString("_min_per_class"))
        || !(s_maxs = PyUnicode_InternFromString("_max_per_class"))
        || !(s_var = PyUnicode_InternFromString("_var"))
        || !(s_mean = PyUnicode_InternFromString("mean"))
        || !(s_n = PyUnicode_InternFromString("n"))
        || !(s_value = PyUnicode_InternFromString("_mean"))
        || !(s_S = PyUnicode_InternFromString("_S"))
        || !(s_ddof = PyUnicode_InternFromString("ddof")))
        return NULL;
    return PyModule_Create(&module_def);
}
