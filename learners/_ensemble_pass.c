/* An ensemble of classifiers combined in C, equal to `learners.graph_eval.combine` to the bit.
 *
 * `mean_probabilities(outs, weights)` does what `combine` does for ``mean`` and ``weighted``
 * when every member is a classifier that gave probabilities (`Outcome`s, the type given once
 * to `configure`, whose item 1 is the probabilities and item 2 the kind), ``weights`` being
 * None (each 1.0) or one number per member:
 *
 *     sums = {}; total = 0.0
 *     for o, w in zip(outs, weights):
 *         total += w
 *         for label, p in o.probabilities.items():
 *             sums[label] = sums.get(label, 0.0) + w * p
 *     if total != 1.0:
 *         for label, s in sums.items(): sums[label] = s / total
 *     prediction = the label of the largest sum, the first one's; on a tie the first label of
 *                  those tied whose repr sorts first (`learners.graph_eval._argmax`)
 *
 * and returns ``(prediction, sums)``; or None, having changed nothing, for anything else,
 * which `combine` then works out in Python: a kind other than "classifier", probabilities
 * that are not a non-empty dict (an untrained member, a regressor's), a label that is not
 * exactly a bool, an int, a float or a str, a number that is not exactly a float or an int
 * within ±2**53, weights of another length, a total that is not positive, a mean that is
 * NaN.
 *
 * Why the numbers are Python's: each step is one IEEE 754 operation in Python (`float_mul`,
 * `float_add`, `float_div`), done here in the same order on the same doubles, compiled without
 * contraction of a * b + c into one rounding (pyproject.toml); an int within ±2**53 converts
 * to the same double either way. The labels are looked up and stored as Python's dict does
 * (their own hash and equality), so the sums keep the first member's order and key objects.
 *
 * Built by `pip install` (pyproject.toml, an optional extension): without a C compiler the
 * Python loop answers, with the same numbers. `tests/learners/test_graph.py` compares both.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>

#include "_exact_number.h"

static PyObject *s_classifier, *outcome_type;

/* Whether `label` is a bool, an int, a float or a str exactly: their hashes, equalities and
 * reprs run no Python code, so nothing can change the dicts read here while they are read. */
static int
plain_label(PyObject *label)
{
    return PyBool_Check(label) || PyLong_CheckExact(label) || PyUnicode_CheckExact(label)
        || PyFloat_CheckExact(label);
}

/* `d[key] = value` (a new float): 0, or -1 with an exception set. */
static int
set_float(PyObject *d, PyObject *key, double value)
{
    PyObject *number = PyFloat_FromDouble(value);
    if (number == NULL)
        return -1;
    int failed = PyDict_SetItem(d, key, number);
    Py_DECREF(number);
    return failed;
}

/* The label `combine`'s `_argmax` picks among `sums` (no NaN): a new reference, or NULL with
 * an exception set (a repr that raised). */
static PyObject *
argmax(PyObject *sums)
{
    Py_ssize_t pos = 0, ties = 0;
    PyObject *key, *value, *best_key = NULL;
    double best = 0.0;
    while (PyDict_Next(sums, &pos, &key, &value)) {
        double v = PyFloat_AS_DOUBLE(value);
        if (best_key == NULL || v > best) {
            best_key = key;
            best = v;
            ties = 1;
        }
        else if (v == best) {
            ties++;
        }
    }
    if (ties == 1) {
        Py_INCREF(best_key);
        return best_key;
    }
    /* min((k for k, v in sums.items() if v == best), key=repr): the first smallest repr */
    PyObject *chosen = NULL, *chosen_repr = NULL;
    pos = 0;
    while (PyDict_Next(sums, &pos, &key, &value)) {
        if (PyFloat_AS_DOUBLE(value) != best)
            continue;
        PyObject *r = PyObject_Repr(key);
        if (r == NULL)
            goto error;
        int smaller = chosen_repr == NULL ? 1 : PyObject_RichCompareBool(r, chosen_repr, Py_LT);
        if (smaller < 0) {
            Py_DECREF(r);
            goto error;
        }
        if (smaller) {
            Py_XDECREF(chosen_repr);
            chosen_repr = r;
            chosen = key;
        }
        else {
            Py_DECREF(r);
        }
    }
    Py_XDECREF(chosen_repr);
    Py_INCREF(chosen);
    return chosen;
error:
    Py_XDECREF(chosen_repr);
    return NULL;
}

static PyObject *
mean_probabilities(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "mean_probabilities(outs, weights)");
        return NULL;
    }
    /* First, the one allocation that may run the collector, and so finalizers, which could
     * change what is read below: nothing after it runs Python code until the answer's tuple. */
    PyObject *sums = PyDict_New();
    if (sums == NULL)
        return NULL;
    PyObject *outs = args[0], *weights = args[1];
    if (outcome_type == NULL || !(PyList_CheckExact(outs) || PyTuple_CheckExact(outs)))
        goto fallback;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(outs);
    PyObject **items = PySequence_Fast_ITEMS(outs);
    PyObject **ws = NULL;
    if (weights != Py_None) {
        if (!(PyList_CheckExact(weights) || PyTuple_CheckExact(weights))
            || PySequence_Fast_GET_SIZE(weights) != n)
            goto fallback;
        ws = PySequence_Fast_ITEMS(weights);
    }
    if (n == 0)
        goto fallback;
    /* every member a classifier's `Outcome`, with probabilities */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = items[i];
        if (Py_TYPE(o) != (PyTypeObject *)outcome_type || PyTuple_GET_SIZE(o) < 3)
            goto fallback;
        PyObject *kind = PyTuple_GET_ITEM(o, 2), *proba = PyTuple_GET_ITEM(o, 1);
        if (kind != s_classifier
            && !(PyUnicode_CheckExact(kind) && PyUnicode_Compare(kind, s_classifier) == 0))
            goto fallback;
        if (!PyDict_CheckExact(proba) || PyDict_GET_SIZE(proba) == 0)
            goto fallback;
    }
    double total = 0.0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *proba = PyTuple_GET_ITEM(items[i], 1), *label, *value;
        double w = 1.0, p;
        if (ws != NULL && !exact_number(ws[i], &w))
            goto fallback;
        total += w;
        Py_ssize_t pos = 0;
        while (PyDict_Next(proba, &pos, &label, &value)) {
            if (!plain_label(label) || !exact_number(value, &p))
                goto fallback;
            PyObject *had = PyDict_GetItemWithError(sums, label); /* borrowed */
            if (had == NULL && PyErr_Occurred())
                goto error;
            double s = had == NULL ? 0.0 : PyFloat_AS_DOUBLE(had);
            if (set_float(sums, label, s + w * p) < 0)
                goto error;
        }
    }
    if (!(total > 0.0))
        goto fallback;
    Py_ssize_t pos = 0;
    PyObject *label, *value;
    while (PyDict_Next(sums, &pos, &label, &value)) {
        double s = PyFloat_AS_DOUBLE(value);
        if (total != 1.0) { /* replacing a key's value keeps the dict's order and size */
            s = s / total;
            if (set_float(sums, label, s) < 0)
                goto error;
        }
        if (isnan(s))
            goto fallback;
    }
    PyObject *prediction = argmax(sums);
    if (prediction == NULL)
        goto error;
    PyObject *answer = PyTuple_New(2);
    if (answer == NULL) {
        Py_DECREF(prediction);
        goto error;
    }
    PyTuple_SET_ITEM(answer, 0, prediction);
    PyTuple_SET_ITEM(answer, 1, sums);
    return answer;
fallback:
    Py_DECREF(sums);
    Py_RETURN_NONE;
error:
    Py_DECREF(sums);
    return NULL;
}

/* `configure(Outcome)`: the one type of member answered here (its fields by position). */
static PyObject *
configure(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 || !PyType_Check(args[0])
        || !PyType_IsSubtype((PyTypeObject *)args[0], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure(Outcome: a tuple type)");
        return NULL;
    }
    Py_INCREF(args[0]);
    Py_XSETREF(outcome_type, args[0]);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(Outcome): the type of the members' answers."},
    {"mean_probabilities", (PyCFunction)(void (*)(void))mean_probabilities, METH_FASTCALL,
     "mean_probabilities(outs, weights) -> (prediction, probabilities) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "learners._ensemble_pass",
    .m_doc = "An ensemble of classifiers combined in C (learners/_ensemble_pass.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__ensemble_pass(void)
{
    if (!(s_classifier = PyUnicode_InternFromString("classifier")))
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        Py_CLEAR(s_classifier);
    return module;
}
