/* The one reading of a Python number as a C double that is exactly Python's, shared by the
 * learner's C passes (learners/_linear_pass.c, learners/_tree_pass.c). */
#ifndef RIVERSTREAM_EXACT_NUMBER_H
#define RIVERSTREAM_EXACT_NUMBER_H

#include <Python.h>

#define EXACT_INT (1LL << 53)

/* The double of `value` (exactly a float, or exactly an int within ±2**53, which converts to
 * the same double in C as in Python) in `out`: 1; 0 for any other value (a bool, a larger
 * int, a numpy number, a string...), which the caller leaves to Python. */
static inline int
exact_number(PyObject *value, double *out)
{
    if (PyFloat_CheckExact(value)) {
        *out = PyFloat_AS_DOUBLE(value);
        return 1;
    }
    if (PyLong_CheckExact(value)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || v > EXACT_INT || v < -EXACT_INT)
            return 0;
        *out = (double)v;
        return 1;
    }
    return 0;
}

#endif
