/* A standard scaler's learning pass, a linear model's dot product with the scaled features, and
 * a whole sample of plain SGD (`sgd_learn`, below), in C, equal to River's to the bit.
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
static PyObject *default_factory_name, *weight_pos_name, *weight_neg_name, *float_type, *one_half,
    *zero;
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

/* One sample's pass over a standard scaler's statistics: what `scale_learn` reads, holds and
 * computes before it writes anything (`sgd_learn` goes on from it). */
typedef struct {
    Py_ssize_t k;  /* the features read, held in `keys` */
    PyObject *keys[MAX_FEATURES], *stored_means[MAX_FEATURES], *stored_vars[MAX_FEATURES];
    double xs[MAX_FEATURES], olds[MAX_FEATURES], vars[MAX_FEATURES];
    double means[MAX_FEATURES], new_vars[MAX_FEATURES], scaled[MAX_FEATURES];
    long long ns[MAX_FEATURES];
} ScalerPass;

/* Reads every feature of `x` and its statistics into `p`, holding the names and the stored
 * floats (`release_pass` lets them go, whatever this returns): 1; 0 when the Python loop must
 * learn (see the top of this file); -1 with an error set. */
static int
read_pass(PyObject *x, PyObject *counts, PyObject *means, PyObject *variances, ScalerPass *p)
{
    p->k = 0;
    if (!PyDict_CheckExact(x) || Py_TYPE(counts) != counter_type || means == variances)
        return 0;
    int ok = standard_statistics(means, variances);
    if (ok <= 0)
        return ok;
    if (PyDict_GET_SIZE(x) > MAX_FEATURES)
        return 0;
    /* A lookup may run Python code (a stored key of another type, with the same hash,
     * compared): the names and the stored statistics are held until the end, so none can be
     * freed under this pass. */
    Py_ssize_t pos = 0, k;
    PyObject *key, *value;
    while (PyDict_Next(x, &pos, &key, &value)) {
        k = p->k;
        if (k == MAX_FEATURES || !PyUnicode_CheckExact(key) || !exact_number(value, &p->xs[k])
            || isnan(p->xs[k]))
            return 0;
        p->keys[k] = Py_NewRef(key);
        p->stored_means[k] = p->stored_vars[k] = NULL;
        p->k++;
        PyObject *count = PyDict_GetItemWithError(counts, key);
        if (count == NULL) {
            if (PyErr_Occurred())
                return -1;
            p->ns[k] = 1;
        }
        else {
            if (!PyLong_CheckExact(count))
                return 0;
            int overflow;
            long long c = PyLong_AsLongLongAndOverflow(count, &overflow);
            if (overflow || c < 0 || c >= EXACT_INT)
                return 0;
            p->ns[k] = c + 1;
        }
        int read = stored_float(means, key, &p->stored_means[k], &p->olds[k]);
        Py_XINCREF(p->stored_means[k]);
        if (read == 1) {
            read = stored_float(variances, key, &p->stored_vars[k], &p->vars[k]);
            Py_XINCREF(p->stored_vars[k]);
        }
        if (read <= 0)
            return read;
    }
    return PyDict_GET_SIZE(x) == p->k;  /* else changed while it was read */
}

/* Every new number of the pass: 1; 0 when one is a NaN, which leaves the whole sample to
 * Python (which NaN an operation on two NaNs gives depends on the order of its operands in
 * the machine code, CPython's own differing from one call to the next, and the pickled state
 * keeps it). */
static int
compute_pass(ScalerPass *p)
{
    for (Py_ssize_t j = 0; j < p->k; j++) {
        double xi = p->xs[j], old = p->olds[j], n = (double)p->ns[j];
        double mean = old + (xi - old) / n;
        double var = p->vars[j];
        var = var + ((xi - old) * (xi - mean) - var) / n;
        double s = 0.0;
        if (var > 0.0 && isfinite(var))
            s = (xi - mean) / power(var, 0.5);
        if (isnan(old) || isnan(p->vars[j]) || isnan(mean) || isnan(var) || isnan(s))
            return 0;
        p->means[j] = mean;
        p->new_vars[j] = var;
        p->scaled[j] = s;
    }
    return 1;
}

/* Whether every new variance is 0 or positive and finite: the scaled values are then
 * `p->scaled` (else Python's own power and division give them). */
static int
plainly_scaled(const ScalerPass *p)
{
    for (Py_ssize_t j = 0; j < p->k; j++) {
        double var = p->new_vars[j];
        if (!(var == 0.0 || (var > 0.0 && isfinite(var))))
            return 0;
    }
    return 1;
}

/* Writes the new statistics, and the scaled features into `scaled` unless it is NULL: 0; -1
 * with an error set. */
static int
write_pass(const ScalerPass *p, PyObject *counts, PyObject *means, PyObject *variances,
           PyObject *scaled)
{
    for (Py_ssize_t j = 0; j < p->k; j++) {
        double mean = p->means[j], var = p->new_vars[j];
        PyObject *count = PyLong_FromLongLong(p->ns[j]), *s = NULL;
        if (scaled == NULL)
            ;
        else if (var == 0.0 || (var > 0.0 && isfinite(var)))
            s = PyFloat_FromDouble(p->scaled[j]);
        else  /* infinite or negative (a state set by hand): Python's own power and division */
            s = scaled_in_python(p->xs[j] - mean, var);
        int failed = count == NULL || (scaled != NULL && s == NULL)
            || PyDict_SetItem(counts, p->keys[j], count) < 0
            || store_float(means, p->keys[j], p->stored_means[j], mean) < 0
            || store_float(variances, p->keys[j], p->stored_vars[j], var) < 0
            || (scaled != NULL && PyDict_SetItem(scaled, p->keys[j], s) < 0);
        Py_XDECREF(count);
        Py_XDECREF(s);
        if (failed)
            return -1;
    }
    return 0;
}

static void
release_pass(ScalerPass *p)
{
    for (Py_ssize_t j = 0; j < p->k; j++) {
        Py_DECREF(p->keys[j]);
        Py_XDECREF(p->stored_means[j]);
        Py_XDECREF(p->stored_vars[j]);
    }
    p->k = 0;
}

static PyObject *
scale_learn(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scale_learn(x, counts, means, variances)");
        return NULL;
    }
    PyObject *x = args[0], *counts = args[1], *means = args[2], *variances = args[3];
    /* Made first: a dict's allocation may run the garbage collector (and finalizers). */
    PyObject *scaled = PyDict_New();
    if (scaled == NULL)
        return NULL;
    ScalerPass p;
    PyObject *result = NULL;
    int read = read_pass(x, counts, means, variances, &p);
    if (read == 1 && compute_pass(&p)) {
        if (write_pass(&p, counts, means, variances, scaled) == 0)
            result = Py_NewRef(scaled);
    }
    else if (read == 1 || read == 0)
        result = Py_NewRef(Py_None);  /* left to the Python loop, nothing written */
    release_pass(&p);
    Py_DECREF(scaled);
    return result;
}

/* The label's sign as River's `Log.gradient` makes it (`-1` for a label equal to 0, else
 * `int(y)`), and the loss's weight for it, in `sign` and `weight`: 1; 0 when the label is not
 * a bool, an int or a float within ±2**53, or the weight is not a float (or is NaN); -1 with
 * an error set. */
static int
log_label(PyObject *y, PyObject *loss, double *sign, double *weight)
{
    double v;
    if (y == Py_True || y == Py_False)
        v = y == Py_True;
    else if (!exact_number(y, &v) || !(fabs(v) < (double)EXACT_INT))
        return 0;
    PyObject *w = PyObject_GetAttr(loss, v == 0.0 ? weight_neg_name : weight_pos_name);
    if (w == NULL)
        return -1;
    /* A float weight only: River's products with an int weight stay ints (an int 0 times the
     * sign is 0, where doubles give -0.0). */
    int ok = PyFloat_CheckExact(w) && !isnan(PyFloat_AS_DOUBLE(w));
    *weight = ok ? PyFloat_AS_DOUBLE(w) : 0.0;
    Py_DECREF(w);
    /* `int(y)`: an int, so a label in (-1, 1) gives 0, never -0.0 (+ 0.0 drops the sign) */
    *sign = v == 0.0 ? -1.0 : trunc(v) + 0.0;
    return ok;
}

/* River's loss gradient of a raw score `y_pred` (`LOG`: `Log.gradient`, `SQUARED`:
 * `Squared.gradient`), with the same operations in the same order, into `out`: 1; 0 when the
 * label or the loss is not of the kinds taken here; -1 with an error set. */
enum { LOG = 1, SQUARED = 2 };

static int
loss_gradient(long kind, PyObject *loss, PyObject *y, double y_pred, double *out)
{
    if (kind == LOG) {
        double sign, weight;
        int ok = log_label(y, loss, &sign, &weight);
        if (ok <= 0)
            return ok;
        /* `-y_true` of an int: 0.0 - sign, so that -0 is 0 (-sign would give -0.0) */
        double z = y_pred * sign, negated = 0.0 - sign;
        if (z > 18.0)
            *out = weight * exp(-z) * negated;
        else if (z < -18.0)
            *out = weight * negated;
        else
            *out = weight * negated / (exp(z) + 1.0);
        return 1;
    }
    if (kind == SQUARED) {
        double v;
        if (y == Py_True || y == Py_False)
            v = y == Py_True;
        else if (!exact_number(y, &v))
            return 0;
        *out = 2.0 * (y_pred - v);
        return 1;
    }
    return 0;
}

/* A linear pipeline's whole `learn_one` with plain SGD, neither L1 nor L2, zeros for new
 * weights, constant rates (`lr`, `intercept_lr`: River reads a scheduler's midway, and it may
 * raise there), and a `Log` or `Squared` loss (`loss_kind` 1 or 2), as `LinearLearning.learn_one`
 * does it in Python on River's objects, statement for statement:
 *
 *     scaled = the scaler's pass of `x` (as `scale_learn`)
 *     acc = sum over scaled, in its order, of weights[i] * scaled[i], a missing weight
 *           stored at 0.0 when read (the masked view's dot)
 *     g = loss.gradient(y_true=y, y_pred=acc + intercept); g *= 1.0
 *     g = float(max(min(g, clip), -clip))
 *     intercept -= intercept_lr * g
 *     weights[i] = weights[i] - lr * (scaled[i] * g), per feature in scaled's order
 *
 * and returns the new intercept (the caller stores it and counts the optimizer's step). None
 * having written nothing, when anything is not what can be repeated in C doubles: what
 * `scale_learn` leaves to Python, a variance that is not 0 or positive and finite, `weights`
 * not exactly a dict (or one of the scaler's), a stored weight, `clip` or a loss weight that
 * is not a float, a label, the intercept or a rate that is not a float or an int within
 * ±2**53, or a NaN anywhere. `exp` is libm's, which `math.exp` calls. */
static PyObject *
sgd_learn(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "sgd_learn(x, counts, means, variances, weights, "
                                         "intercept, y, loss_kind, loss, clip, lr, intercept_lr)");
        return NULL;
    }
    PyObject *x = args[0], *counts = args[1], *means = args[2], *variances = args[3],
             *weights = args[4], *y = args[6], *loss = args[8];
    long kind = PyLong_AsLong(args[7]);
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    double intercept, clip, lr, intercept_lr;
    /* A float clip only: River's `-clip` of an int 0 is 0, where a double's is -0.0. */
    if (!PyDict_CheckExact(weights) || weights == counts || weights == means
        || weights == variances || !exact_number(args[5], &intercept)
        || !PyFloat_CheckExact(args[9]) || !exact_number(args[9], &clip)
        || !exact_number(args[10], &lr)
        || !exact_number(args[11], &intercept_lr) || isnan(intercept) || isnan(clip)
        || isnan(lr) || isnan(intercept_lr))
        Py_RETURN_NONE;

    ScalerPass p;
    PyObject *stored_weights[MAX_FEATURES], *result = NULL;
    double ws[MAX_FEATURES];
    Py_ssize_t held = 0;
    int read = read_pass(x, counts, means, variances, &p);
    if (read <= 0 || !compute_pass(&p) || !plainly_scaled(&p))
        goto done;
    for (; held < p.k; held++) {
        int got = stored_float(weights, p.keys[held], &stored_weights[held], &ws[held]);
        Py_XINCREF(stored_weights[held]);
        if (got <= 0 || isnan(ws[held])) {
            read = got < 0 ? -1 : 0;
            held++;
            goto done;
        }
    }
    double acc = 0.0;
    for (Py_ssize_t j = 0; j < p.k; j++)
        acc += ws[j] * p.scaled[j];
    double g;
    read = loss_gradient(kind, loss, y, acc + intercept, &g);
    if (read <= 0 || isnan(g))
        goto done;
    g = clip < g ? clip : g;      /* min(g, clip): the first unless the other is less */
    g = -clip > g ? -clip : g;    /* max(g, -clip) */
    double new_intercept = intercept - intercept_lr * g;
    if (isnan(new_intercept))
        goto done;
    for (Py_ssize_t j = 0; j < p.k; j++) {
        ws[j] = ws[j] - lr * (p.scaled[j] * g);
        if (isnan(ws[j]))
            goto done;
    }
    if (write_pass(&p, counts, means, variances, NULL) < 0) {
        read = -1;
        goto done;
    }
    for (Py_ssize_t j = 0; j < p.k; j++) {
        if (store_float(weights, p.keys[j], stored_weights[j], ws[j]) < 0) {
            read = -1;
            goto done;
        }
    }
    result = PyFloat_FromDouble(new_intercept);
    if (result == NULL)
        read = -1;
done:
    for (Py_ssize_t j = 0; j < held; j++)
        Py_XDECREF(stored_weights[j]);
    release_pass(&p);
    if (result != NULL)
        return result;
    if (read < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* `acc += weights.get(key, 0.0) * scaled`, the scaled value of `xi` read as `dot_scaled` reads it
 * (storing 0.0 for a missing variance, and for a missing mean it reads): 1; 0 when the
 * Python loop must answer; -1 with an error set. */
static int
add_term(PyObject *key, double xi, PyObject *means, PyObject *variances, PyObject *weights,
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
    PyObject *w = PyDict_GetItemWithError(weights, key);
    if (w == NULL && PyErr_Occurred())
        return -1;
    w = Py_NewRef(w == NULL ? zero : w);  /* held: a later lookup may run Python code */
    int is_float = PyFloat_CheckExact(w) && !isnan(PyFloat_AS_DOUBLE(w));
    if (is_float)
        *acc += PyFloat_AS_DOUBLE(w) * scaled;
    Py_DECREF(w);
    return is_float;
}

/* `LinearLearning._raw_dot`'s sum before the intercept: per feature of `x`, in `x`'s order,
 *
 *     var = variances[i]
 *     acc += weights.get(i, 0.0) * ((xi - means[i]) / var**0.5 if var else 0.0)
 *
 * from acc = 0.0, a `defaultdict` storing 0.0 for a missing variance (and for a missing mean
 * it reads), as the Python loop's reads do. None when that loop must answer instead: the
 * arguments are not of the kinds `scale_learn` takes, a weight is not a float, or a variance
 * is not positive and finite; the loop then reads what was stored here and stores nothing
 * more, so its state and its answer are the same. */
static PyObject *
dot_scaled(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "dot_scaled(x, means, variances, weights: dict)");
        return NULL;
    }
    PyObject *x = args[0], *means = args[1], *variances = args[2], *weights = args[3];
    if (!PyDict_CheckExact(x) || means == variances || weights == means || weights == variances)
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
        int added = add_term(key, xi, means, variances, weights, &acc);
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
     "dot_scaled(x, means, variances, weights) -> float | None: the weights' dot product with "
     "the scaled features (see _linear_pass.c)."},
    {"dot_standardized", (PyCFunction)(void (*)(void))dot_standardized, METH_FASTCALL,
     "dot_standardized(x, params) -> float | None: a served linear model's sum (see "
     "_linear_pass.c)."},
    {"sgd_learn", (PyCFunction)(void (*)(void))sgd_learn, METH_FASTCALL,
     "sgd_learn(x, counts, means, variances, weights, intercept, y, loss_kind, loss, clip, lr, "
     "intercept_lr) -> float | None: a linear pipeline's learn_one with plain SGD, River's to "
     "the bit (see _linear_pass.c)."},
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
    weight_pos_name = PyUnicode_InternFromString("weight_pos");
    weight_neg_name = PyUnicode_InternFromString("weight_neg");
    float_type = (PyObject *)&PyFloat_Type;
    one_half = PyFloat_FromDouble(0.5);
    zero = PyFloat_FromDouble(0.0);
    if (default_factory_name == NULL || weight_pos_name == NULL || weight_neg_name == NULL
        || one_half == NULL || zero == NULL)
        return NULL;
    return PyModule_Create(&module);
}
