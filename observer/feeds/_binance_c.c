/* observer.feeds._binance_c: find the fields of a Binance depth diff without parsing it into
objects.

Why it exists. A live Binance book costs one diff per 100 ms per symbol, and at 12k diffs/s
turning each into a dict of lists of lists of strings (orjson) and reading them back was the
largest share left of a shard's CPU per message. scan_diff walks the bytes once and returns
only what the sync rule reads (symbol, E, U, u) and where the two level arrays are; the book's
compiled loop (observer/book/_book_c.c set_text_levels) then reads the levels from those
spans itself.

The contract is narrow on purpose: it accepts only the plain shape Binance sends,

    {"stream":"<text>","data":{"e":"depthUpdate","E":<int>,"s":"<text>","U":<int>,"u":<int>,
                              "b":[["<text>","<text>"],...],"a":[...]}}

or the same payload object alone (a raw stream), keys in any order, whitespace anywhere JSON
allows it, other payload keys with a string or integer value skipped. Strings must be printable
ASCII without escapes; integers non-negative and below 2**63; the level arrays' spans short
enough to hold fewer than `levels_max` levels (their levels are read, strictly, by the book). Anything else (another event kind, a duplicate key, a float,
an escape, a nested value it does not know, bad JSON) returns None, and the adapter parses the
message with orjson (observer/feeds/binance.py): that path is the reference, with every error
message, and tests/feeds/test_binance_scan.py holds the two to the same books and actions. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    const char *p, *end;
} Cursor;

static void ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Expect one character after whitespace. */
static int expect(Cursor *c, char ch) {
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes, printable ASCII: its body in [*s, *s + *n). */
static int string(Cursor *c, const char **s, Py_ssize_t *n) {
    if (!expect(c, '"'))
        return 0;
    const char *start = c->p;
    while (c->p < c->end && *c->p != '"') {
        unsigned char ch = (unsigned char)*c->p;
        if (ch < 0x20 || ch > 0x7e || ch == '\\')
            return 0;
        c->p++;
    }
    if (c->p >= c->end)
        return 0;
    *s = start;
    *n = c->p - start;
    c->p++;
    return 1;
}

/* A non-negative JSON integer below 2**63 (no sign, no leading zero, no fraction). */
static int integer(Cursor *c, int64_t *out) {
    ws(c);
    const char *start = c->p;
    int64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, *c->p - '0', &v))
            return 0;
        c->p++;
    }
    Py_ssize_t n = c->p - start;
    if (n == 0 || (n > 1 && *start == '0'))
        return 0;
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E'))
        return 0;
    *out = v;
    return 1;
}

/* `[[...],...]`: its span, found by its first `]` followed by `]` (memchr from `]` to `]`),
   without reading the levels: Book.apply_text_diff walks the span strictly (and fails, the
   book untouched, on anything but plain levels), so a span cut short by a `]]` inside a string
   is never applied, and a span that is applied was the array's true extent. */
static int levels(Cursor *c, Py_ssize_t *start, Py_ssize_t *stop, const char *base) {
    if (!expect(c, '['))
        return 0;
    *start = c->p - 1 - base;
    if (expect(c, ']')) {
        *stop = c->p - base;
        return 1;
    }
    for (;;) {
        const char *q = memchr(c->p, ']', c->end - c->p);
        if (q == NULL)
            return 0;
        c->p = q + 1;
        if (expect(c, ']')) {
            *stop = c->p - base;
            return 1;
        }
    }
}

/* One key's name, compared as bytes. */
static int is_key(const char *s, Py_ssize_t n, const char *name) {
    return (Py_ssize_t)strlen(name) == n && memcmp(s, name, n) == 0;
}

enum { F_E = 1, F_EVENT_TIME = 2, F_S = 4, F_FIRST = 8, F_LAST = 16, F_B = 32, F_A = 64,
       F_ALL = 127 };

typedef struct {
    int seen;
    int64_t event_time, first_id, last_id;
    const char *symbol;
    Py_ssize_t symbol_n, b0, b1, a0, a1;
} Diff;

/* The payload object's members (the '{' already taken), up to its '}'. */
static int payload(Cursor *c, const char *base, Diff *d) {
    if (expect(c, '}'))
        return 0; /* an empty payload is not a diff */
    do {
        const char *k, *s;
        Py_ssize_t kn, n;
        int bit = 0, ok;
        if (!string(c, &k, &kn) || !expect(c, ':'))
            return 0;
        if (kn == 1) {
            switch (k[0]) {
            case 'e': bit = F_E; break;
            case 'E': bit = F_EVENT_TIME; break;
            case 's': bit = F_S; break;
            case 'U': bit = F_FIRST; break;
            case 'u': bit = F_LAST; break;
            case 'b': bit = F_B; break;
            case 'a': bit = F_A; break;
            }
        }
        if (d->seen & bit)
            return 0; /* a repeated key: the reference decides what that means */
        d->seen |= bit;
        switch (bit) {
        case F_E:
            ok = string(c, &s, &n) && is_key(s, n, "depthUpdate");
            break;
        case F_EVENT_TIME: ok = integer(c, &d->event_time); break;
        case F_S: ok = string(c, &d->symbol, &d->symbol_n); break;
        case F_FIRST: ok = integer(c, &d->first_id); break;
        case F_LAST: ok = integer(c, &d->last_id); break;
        case F_B: ok = levels(c, &d->b0, &d->b1, base); break;
        case F_A: ok = levels(c, &d->a0, &d->a1, base); break;
        default: { /* another key: a string or an integer, skipped */
            int64_t ignored;
            ws(c);
            ok = c->p < c->end && *c->p == '"' ? string(c, &s, &n) : integer(c, &ignored);
        }
        }
        if (!ok)
            return 0;
    } while (expect(c, ','));
    return expect(c, '}') && d->seen == F_ALL;
}

/* The message: a payload alone, or {"stream": text, "data": payload} in either order. */
static int message(Cursor *c, const char *base, Diff *d) {
    const char *k, *s;
    Py_ssize_t kn, n;
    if (!expect(c, '{') || !string(c, &k, &kn) || !expect(c, ':'))
        return 0;
    if (!is_key(k, kn, "stream") && !is_key(k, kn, "data")) {
        c->p = base;  /* a raw stream: the payload is the message */
        return expect(c, '{') && payload(c, base, d);
    }
    int stream = 0, data = 0;
    for (;;) {
        if (is_key(k, kn, "stream") && !stream) {
            stream = 1;
            if (!string(c, &s, &n))
                return 0;
        } else if (is_key(k, kn, "data") && !data) {
            data = 1;
            if (!expect(c, '{') || !payload(c, base, d))
                return 0;
        } else {
            return 0;
        }
        if (!expect(c, ','))
            break;
        if (!string(c, &k, &kn) || !expect(c, ':'))
            return 0;
    }
    return stream && data && expect(c, '}');
}

/* (symbol, E, U, u, b0, b1, a0, a1), built directly (Py_BuildValue reads its format each call). */
static PyObject *fields(const Diff *d) {
    PyObject *tuple = PyTuple_New(8);
    if (tuple == NULL)
        return NULL;
    PyObject *items[8] = {
        PyUnicode_DecodeASCII(d->symbol, d->symbol_n, NULL), PyLong_FromLongLong(d->event_time),
        PyLong_FromLongLong(d->first_id), PyLong_FromLongLong(d->last_id),
        PyLong_FromSsize_t(d->b0), PyLong_FromSsize_t(d->b1), PyLong_FromSsize_t(d->a0),
        PyLong_FromSsize_t(d->a1)};
    int failed = 0;
    for (int k = 0; k < 8; k++) {
        failed |= items[k] == NULL;
        PyTuple_SET_ITEM(tuple, k, items[k]); /* NULL items are freed as such by the tuple */
    }
    if (failed) {
        Py_DECREF(tuple);
        return NULL;
    }
    return tuple;
}

/* scan_diff(data, levels_max) -> (symbol, E, U, u, b0, b1, a0, a1) or None */
static PyObject *scan_diff(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "scan_diff(data, levels_max)");
        return NULL;
    }
    Py_ssize_t levels_max = PyLong_AsSsize_t(args[1]);
    if (levels_max == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *base = (const char *)view.buf;
    Cursor c = {base, base + view.len};
    Diff d = {0};
    PyObject *result;
    /* A level takes at least 10 bytes with its comma (`["1","1"],`): spans this short hold
       fewer than levels_max levels. */
    if (message(&c, base, &d) && (ws(&c), c.p == c.end)
        && (d.b1 - d.b0) + (d.a1 - d.a0) <= 9 * levels_max)
        result = fields(&d);
    else
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"scan_diff", (PyCFunction)(void (*)(void))scan_diff, METH_FASTCALL,
     "scan_diff(data, levels_max) -> (symbol, E, U, u, b0, b1, a0, a1) for a plain Binance "
     "depth diff with at most levels_max levels (data[b0:b1] and data[a0:a1] are its bid and "
     "ask arrays), else None: parse it the general way."},
    {NULL},
};

static struct PyModuleDef binance_module = {
    PyModuleDef_HEAD_INIT, "observer.feeds._binance_c",
    "A Binance depth diff's fields found in its bytes (see observer/feeds/binance.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__binance_c(void) { return PyModule_Create(&binance_module); }
