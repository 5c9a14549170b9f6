/* One helper shared by the compiled modules of both distributions: obproto/_latch_c.c (built by
   client/setup.py) and observer/book/_book_c.c (built by the root setup.py, which finds this
   header in client/obproto of a checkout, else in the installed obproto package).
   Include after <Python.h> and <stdint.h>. */
#ifndef OBPROTO_PYINT64_H
#define OBPROTO_PYINT64_H

/* An int of a book's lists (a stored key or size) as int64; -1 with an exception set if it is
   not one that fits int64, which the book's invariants rule out.

   Why not just PyLong_AsLongLong: it costs about 200 instructions each (type checks, a general
   digit loop), more than the rest of a level, and a bisect reads about six stored ints per
   level. CPython 3.11 keeps an int as 30-bit digits with the sign in ob_size; every price and
   size at a book's exponent takes at most two digits (below 2**60) in practice, read here
   directly in about 10 instructions. Anything else, and other CPython versions, take the
   general call. */
static inline int pyint_as_int64(PyObject *item, int64_t *out) {
#if PY_VERSION_HEX < 0x030C0000 && PYLONG_BITS_IN_DIGIT == 30
    if (PyLong_CheckExact(item)) {
        Py_ssize_t size = Py_SIZE(item);
        const digit *d = ((PyLongObject *)item)->ob_digit;
        if (size >= -2 && size <= 2) {
            int64_t magnitude = size == 0 ? 0 : (int64_t)d[0];
            if (size == 2 || size == -2)
                magnitude |= (int64_t)d[1] << PyLong_SHIFT;
            *out = size < 0 ? -magnitude : magnitude;
            return 0;
        }
    }
#endif
    long long v = PyLong_AsLongLong(item);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

#endif
