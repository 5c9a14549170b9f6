/* observer.book._book_c: Book.apply_side's per-level loop, compiled.

Why it exists. A Binance diff carries about ten levels, each a price text and a size text to
turn into integers at the book's exponents and set into a sorted side. In Python that is the
largest share of a shard's CPU per message (about 5 us for ten levels with the text cache
hitting, twice that with real traffic, whose size texts are mostly new). Here the same work is
done without creating a string, a tuple or a frame per level.

The contract is observer/book/book.py's (Book.apply_side, side_set, the fast path of
fixed.parse_decimal): that module is the reference and the fallback (OBSERVER_PURE_PYTHON=1,
or no compiler at install). This function takes only what is plain: a level that is a list or
tuple whose first two items are ASCII str holding digits with at most one '.', at most 18
digits, no more fraction digits than the book's exponent, and a value that fits int64 there.
At the first level that is anything else it stops and returns that level's index; book.py
applies that one level with its own code (which makes the exponent finer, or raises the right
error) and calls again from the next. So every decision the reference makes on unusual input
stays in one place, and tests/book/test_book_c.py holds the two to the same levels after every
message, on random and recorded streams.

A side is two Python lists (keys ascending towards the best level at the end, asks' keys
negated; sizes parallel), shared with the Python code, so everything else in book.py (reading,
truncating, rescaling, checking) works on the lists as before. No Python code runs in here: the
texts and ints are read through exact types only.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "_pyint64.h"

#define DIGITS_MAX 18 /* 10**18 - 1 < 2**63: a mantissa of this many digits cannot overflow */
#define DECIMALS_MAX 18 /* observer.book.fixed.DECIMALS_MAX */

static const int64_t POW10[DECIMALS_MAX + 1] = {
    1LL, 10LL, 100LL, 1000LL, 10000LL, 100000LL, 1000000LL, 10000000LL, 100000000LL,
    1000000000LL, 10000000000LL, 100000000000LL, 1000000000000LL, 10000000000000LL,
    100000000000000LL, 1000000000000000LL, 10000000000000000LL, 100000000000000000LL,
    1000000000000000000LL};

/* A plain decimal text at `target` fraction digits into *value; 0 on success, -1 if the text
   is not plain, has more than `target` fraction digits, or does not fit int64 there. */
static int plain_value(PyObject *text, int target, int64_t *value) {
    if (!PyUnicode_CheckExact(text) || !PyUnicode_IS_COMPACT_ASCII(text))
        return -1;
    const char *s = (const char *)PyUnicode_DATA(text);
    Py_ssize_t len = PyUnicode_GET_LENGTH(text);
    int64_t mantissa = 0;
    int digits = 0, decimals = 0, dot = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = s[i];
        if (c >= '0' && c <= '9') {
            if (++digits > DIGITS_MAX)
                return -1;
            mantissa = mantissa * 10 + (c - '0');
            decimals += dot;
        } else if (c == '.' && !dot) {
            dot = 1;
        } else {
            return -1;
        }
    }
    if (digits == 0 || decimals > target)
        return -1;
    if (__builtin_mul_overflow(mantissa, POW10[target - decimals], value))
        return -1;
    return 0;
}

/* bisect_left over keys for `key`, galloping from the end (most changes are near the best
   level, which is there); -1 with an exception if a stored key is not an int64. */
static Py_ssize_t find_key(PyObject *keys, int64_t key) {
    Py_ssize_t n = PyList_GET_SIZE(keys), lo = 0, hi = n, step = 1;
    int64_t v;
    while (step <= n) { /* narrow [lo, hi) from the end: keys[hi - 1] >= key */
        Py_ssize_t probe = n - step;
        if (pyint_as_int64(PyList_GET_ITEM(keys, probe), &v) < 0)
            return -1;
        if (v < key) {
            lo = probe + 1;
            break;
        }
        hi = probe;
        step *= 2;
    }
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (pyint_as_int64(PyList_GET_ITEM(keys, mid), &v) < 0)
            return -1;
        if (v < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* side_set: set one level to an absolute size (0 deletes; deleting an unknown one is a no-op). */
static int side_set(PyObject *keys, PyObject *sizes, int64_t key, int64_t size) {
    Py_ssize_t i = find_key(keys, key);
    if (i < 0)
        return -1;
    int64_t found = 0;
    if (i < PyList_GET_SIZE(keys) && pyint_as_int64(PyList_GET_ITEM(keys, i), &found) < 0)
        return -1;
    if (i < PyList_GET_SIZE(keys) && found == key) {
        if (size == 0)
            return PyList_SetSlice(keys, i, i + 1, NULL) < 0
                   || PyList_SetSlice(sizes, i, i + 1, NULL) < 0 ? -1 : 0;
        int64_t current;
        if (pyint_as_int64(PyList_GET_ITEM(sizes, i), &current) < 0)
            return -1;
        if (current == size)
            return 0;
        PyObject *size_obj = PyLong_FromLongLong(size);
        return size_obj == NULL ? -1 : PyList_SetItem(sizes, i, size_obj);
    }
    if (size == 0)
        return 0;
    PyObject *key_obj = PyLong_FromLongLong(key), *size_obj = PyLong_FromLongLong(size);
    int failed = key_obj == NULL || size_obj == NULL || PyList_Insert(keys, i, key_obj) < 0
                 || PyList_Insert(sizes, i, size_obj) < 0;
    Py_XDECREF(key_obj);
    Py_XDECREF(size_obj);
    return failed ? -1 : 0;
}

static PyObject *item(PyObject *seq, Py_ssize_t i) {
    return PyList_Check(seq) ? PyList_GET_ITEM(seq, i) : PyTuple_GET_ITEM(seq, i);
}

static Py_ssize_t length(PyObject *seq) {
    if (PyList_Check(seq))
        return PyList_GET_SIZE(seq);
    return PyTuple_Check(seq) ? PyTuple_GET_SIZE(seq) : -1;
}

/* set_levels(keys, sizes, levels, start, negate, price_decimals, size_decimals) -> index */
static PyObject *set_levels(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "set_levels(keys, sizes, levels, start, negate, "
                                         "price_decimals, size_decimals)");
        return NULL;
    }
    PyObject *keys = args[0], *sizes = args[1], *levels = args[2];
    Py_ssize_t start = PyLong_AsSsize_t(args[3]);
    int negate = PyObject_IsTrue(args[4]);
    long price_decimals = PyLong_AsLong(args[5]), size_decimals = PyLong_AsLong(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyList_CheckExact(keys) || !PyList_CheckExact(sizes) || length(levels) < 0) {
        PyErr_SetString(PyExc_TypeError, "set_levels: keys and sizes are lists, levels a list "
                                         "or a tuple");
        return NULL;
    }
    if (PyList_GET_SIZE(keys) != PyList_GET_SIZE(sizes) || start < 0 || price_decimals < 0
        || price_decimals > DECIMALS_MAX || size_decimals < 0 || size_decimals > DECIMALS_MAX) {
        PyErr_SetString(PyExc_AssertionError, "set_levels: keys and sizes differ in length, "
                                              "or an argument is out of range");
        return NULL;
    }
    Py_ssize_t n = length(levels), i;
    for (i = start; i < n; i++) {
        PyObject *level = item(levels, i);
        int64_t price, size;
        if (length(level) < 2 || plain_value(item(level, 0), price_decimals, &price) < 0
            || plain_value(item(level, 1), size_decimals, &size) < 0)
            break; /* not plain: book.py applies this level itself */
        if (side_set(keys, sizes, negate ? -price : price, size) < 0)
            return NULL;
    }
    return PyLong_FromSsize_t(i);
}

/* ------------------------------------------------------------------ levels as wire text

set_text_levels reads the levels of a diff straight from the message's bytes: the spans of
its bid and ask arrays, `[["price","size"],...]`, as an adapter's scanner found them
(observer/feeds/_binance_c.c). Nothing is made per level but the ints the book keeps. It is
all or nothing: a first pass checks that every level of both spans is plain (the same rule as
plain_value, on bytes) and only then are they applied, so on False the book is untouched and
the caller takes the reference path (orjson and set_levels/book.py) for the whole message. */

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* A quoted plain decimal at p (after whitespace) into *value; the position after it, or NULL.
   plain_value's rule on bytes: digits, at most one '.', 1..DIGITS_MAX digits, at most `target`
   fraction digits, and the value at `target` within int64. The whole part and the fraction
   are two tight loops (no per-character test for the dot); the mantissa is accumulated
   unsigned, so a text too long to be plain cannot overflow before it is refused. */
static const char *text_value(const char *p, const char *end, int target, int64_t *value) {
    p = skip_ws(p, end);
    if (p >= end || *p != '"')
        return NULL;
    const char *start = ++p;
    uint64_t mantissa = 0;
    while (p < end && (unsigned char)(*p - '0') < 10)
        mantissa = mantissa * 10 + (uint64_t)(*p++ - '0');
    Py_ssize_t digits = p - start, decimals = 0;
    if (p < end && *p == '.') {
        const char *fraction = ++p;
        while (p < end && (unsigned char)(*p - '0') < 10)
            mantissa = mantissa * 10 + (uint64_t)(*p++ - '0');
        decimals = p - fraction;
        digits += decimals;
    }
    if (p >= end || *p != '"' || digits == 0 || digits > DIGITS_MAX || decimals > target)
        return NULL;
    if (__builtin_mul_overflow((int64_t)mantissa, POW10[target - decimals], value))
        return NULL;
    return p + 1;
}

/* One `["price","size"]` at p into price and size; the position after it, or NULL. */
static const char *text_level(const char *p, const char *end, int price_decimals,
                              int size_decimals, int64_t *price, int64_t *size) {
    p = skip_ws(p, end);
    if (p >= end || *p != '[')
        return NULL;
    p = text_value(p + 1, end, price_decimals, price);
    if (p == NULL || (p = skip_ws(p, end)) >= end || *p != ',')
        return NULL;
    p = text_value(p + 1, end, size_decimals, size);
    if (p == NULL || (p = skip_ws(p, end)) >= end || *p != ']')
        return NULL;
    return p + 1;
}

/* The levels of the message being applied, parsed once: (price, size) pairs, both sides.
   Reused (grown, never shrunk) across calls; the GIL is held throughout. */
static int64_t *pairs;
static Py_ssize_t pairs_cap; /* in pairs */

static int pairs_reserve(Py_ssize_t n) {
    if (n <= pairs_cap)
        return 0;
    Py_ssize_t cap = pairs_cap ? pairs_cap : 64;
    while (cap < n)
        cap *= 2;
    int64_t *grown = PyMem_Realloc(pairs, (size_t)cap * 2 * sizeof(int64_t));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pairs = grown;
    pairs_cap = cap;
    return 0;
}

/* Parse one span `[level, ...]` exactly into pairs[*n...]. 1: parsed, 0: not plain, -1: error. */
static int text_side(const char *p, const char *end, int price_decimals, int size_decimals,
                     Py_ssize_t *n) {
    p = skip_ws(p, end);
    if (p >= end || *p != '[')
        return 0;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ']')
        return skip_ws(p + 1, end) == end;
    for (;;) {
        if (pairs_reserve(*n + 1) < 0)
            return -1;
        p = text_level(p, end, price_decimals, size_decimals, &pairs[2 * *n], &pairs[2 * *n + 1]);
        if (p == NULL)
            return 0;
        ++*n;
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        return p < end && *p == ']' && skip_ws(p + 1, end) == end;
    }
}

/* set_text_levels(bid_keys, bid_sizes, ask_keys, ask_sizes, data, b0, b1, a0, a1,
                   price_decimals, size_decimals) -> bool */
static PyObject *set_text_levels(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "set_text_levels(bid_keys, bid_sizes, ask_keys, "
                        "ask_sizes, data, b0, b1, a0, a1, price_decimals, size_decimals)");
        return NULL;
    }
    for (int k = 0; k < 4; k++)
        if (!PyList_CheckExact(args[k])) {
            PyErr_SetString(PyExc_TypeError, "set_text_levels: keys and sizes are lists");
            return NULL;
        }
    Py_ssize_t span[4];
    for (int k = 0; k < 4; k++)
        span[k] = PyLong_AsSsize_t(args[5 + k]);
    long price_decimals = PyLong_AsLong(args[9]), size_decimals = PyLong_AsLong(args[10]);
    if (PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[4], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *result = NULL;
    if (PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])
        || PyList_GET_SIZE(args[2]) != PyList_GET_SIZE(args[3]) || price_decimals < 0
        || price_decimals > DECIMALS_MAX || size_decimals < 0 || size_decimals > DECIMALS_MAX
        || span[0] < 0 || span[0] > span[1] || span[1] > view.len || span[2] < 0
        || span[2] > span[3] || span[3] > view.len) {
        PyErr_SetString(PyExc_AssertionError, "set_text_levels: keys and sizes differ in "
                                              "length, or an argument is out of range");
        goto done;
    }
    const char *data = (const char *)view.buf;
    int pd = (int)price_decimals, sd = (int)size_decimals;
    /* Parse everything first (the book untouched if one level is not plain), then apply. */
    Py_ssize_t n_bids = 0, n_all = 0;
    int parsed = text_side(data + span[0], data + span[1], pd, sd, &n_bids);
    if (parsed == 1) {
        n_all = n_bids;
        parsed = text_side(data + span[2], data + span[3], pd, sd, &n_all);
    }
    if (parsed != 1) {
        result = parsed < 0 ? NULL : Py_NewRef(Py_False);
        goto done;
    }
    for (Py_ssize_t i = 0; i < n_all; i++) {
        int ask = i >= n_bids;
        int64_t price = pairs[2 * i];
        if (side_set(args[ask ? 2 : 0], args[ask ? 3 : 1], ask ? -price : price,
                     pairs[2 * i + 1]) < 0)
            goto done;
    }
    result = Py_NewRef(Py_True);
done:
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"set_levels", (PyCFunction)(void (*)(void))set_levels, METH_FASTCALL,
     "set_levels(keys, sizes, levels, start, negate, price_decimals, size_decimals) -> index: "
     "apply levels[start:] to one side in order, up to the first that is not plain "
     "(observer/book/book.py applies that one); returns its index, or len(levels)."},
    {"set_text_levels", (PyCFunction)(void (*)(void))set_text_levels, METH_FASTCALL,
     "set_text_levels(bid_keys, bid_sizes, ask_keys, ask_sizes, data, b0, b1, a0, a1, "
     "price_decimals, size_decimals) -> bool: apply the bid span data[b0:b1] and the ask span "
     "data[a0:a1] (JSON arrays of [\"price\",\"size\"] strings) if every level is plain; "
     "False (nothing applied) if one is not."},
    {NULL},
};

static struct PyModuleDef book_module = {
    PyModuleDef_HEAD_INIT, "observer.book._book_c",
    "Book.apply_side's level loop, compiled (see observer/book/book.py).", -1, methods,
};

PyMODINIT_FUNC PyInit__book_c(void) {
    PyObject *m = PyModule_Create(&book_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "DECIMALS_MAX", DECIMALS_MAX) < 0
        || PyModule_AddIntConstant(m, "DIGITS_MAX", DIGITS_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
