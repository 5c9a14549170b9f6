/* obproto._latch_c: the two hot paths of client/obproto/latch.py, compiled.

Why it exists. A busy-polling client's latency starts at the shard's publish call and ends when
the client holds the record. In Python that is about 1.4 us of interpreter work in the writer
(two struct packs, a dozen word stores) and 0.8 us in the reader (an unpack and a namedtuple),
against 0.3 us for the raw shared-memory spin. These functions do the same stores and loads,
in the same order, without the interpreter in between.

The contract is client/obproto/latch.py's (book_publisher, ring_reader's take, UpdateFollower's head
spin): that module is the reference, picks this one when it is built, and falls back to its own
code otherwise (or with OBSERVER_PURE_PYTHON=1). tests/shm/test_latch_c.py checks that both
leave the same bytes in a segment and read the same records. One step is done differently
for the same bytes: the book's levels go into the idle copy straight from its `top_lists`
(observer.book.Book), where the reference calls `book.export_top` on numpy views.

Ordering. Sequence words are stored with release semantics and loaded with acquire semantics
(plain `mov` on x86-64, whose TSO client/obproto/latch.py requires anyway); data is copied in between,
and a reader's copy is followed by an acquire fence before the sequence is loaded again.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "_pyint64.h"

#define RECORD_BYTES 96     /* obproto.layout.RING_RECORD.itemsize */
#define COPY_HEAD_WORDS 10  /* obproto.layout.COPY_HEAD_FORMAT "<QqqqqQQqqq" */
#define KIND_UPDATE 1       /* obproto.layout.KIND_UPDATE; checked at import by client/obproto/latch.py */
#define SPIN_CHECK_CLOCK_EVERY 256

/* The record after its seq word, obproto.layout.RECORD_BODY_FORMAT "<IBBbbQQqqqqqqq". */
typedef struct {
    uint32_t book_index;
    uint8_t kind;
    uint8_t flags;
    int8_t price_exp;
    int8_t size_exp;
    uint64_t book_seq;
    uint64_t update_id;
    int64_t exch_ts_ns, recv_ts_ns, publish_ts_ns;
    int64_t bid_px, bid_sz, ask_px, ask_sz;
} RecordBody;

_Static_assert(sizeof(RecordBody) == 80, "record body is 80 bytes, no padding");
_Static_assert(8 + sizeof(RecordBody) <= RECORD_BYTES, "record body fits the record");

static inline void store_seq(char *p, uint64_t v) {
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE);
}

static inline uint64_t load_seq(const char *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}

static inline int64_t load_word(const char *p) {
    return __atomic_load_n((const int64_t *)p, __ATOMIC_RELAXED);
}

static inline void store_word(char *p, int64_t v) {
    __atomic_store_n((int64_t *)p, v, __ATOMIC_RELAXED);
}

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static PyObject *str_export_top, *str_top_lists, *str_price_exp, *str_size_exp, *str_update_id,
    *str_exch_ts_ns;

/* ---------------------------------------------------------------------------- Publisher */

typedef struct {
    PyObject_HEAD
    PyObject *buffer;       /* the writable mapping, acquired per call: released, it raises */
    Py_ssize_t book_index;
    Py_ssize_t seq_off;     /* byte offsets into the mapping: the slot's sequence word, */
    Py_ssize_t head_off[2]; /* each copy's head, */
    Py_ssize_t bid_off[2];  /* each copy's bid_px[0] and ask_px[0]; */
    Py_ssize_t ask_off[2];
    Py_ssize_t sizes_off;   /* bytes from a side's px[0] to its sz[0] */
    PyObject *views[2][4];  /* each copy's (bid_px, bid_sz, ask_px, ask_sz) int64 views */
    long long depth_max;
    Py_ssize_t ring_off;    /* the ring's first record */
    uint64_t ring_mask;
    Py_ssize_t ring_head_off;
    PyObject *seqs;         /* the writer's list of slot sequences (shared with its cold path) */
    PyObject *ring_pos;     /* [records ever appended], shared with the shard's other books */
    Py_ssize_t stat_off[4]; /* updates, last_update_ns, last_recv_ns, last_exch_ts_ns */
} Publisher;

static int offset_ok(Py_buffer *map, Py_ssize_t off, Py_ssize_t len) {
    return off >= 0 && off % 8 == 0 && len >= 0 && off <= map->len - len;
}

static int Publisher_init(Publisher *self, PyObject *args, PyObject *kwds) {
    PyObject *buffer;
    unsigned long long ring_mask;
    if (self->buffer != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Publisher initialised twice");
        return -1;
    }
    PyObject *views[2][4], *seqs, *ring_pos; /* borrowed from args */
    if (!PyArg_ParseTuple(args, "Onn(nn)(nn)(nn)n((OOOO)(OOOO))LnKnO!O!(nnnn):Publisher",
                          &buffer, &self->book_index, &self->seq_off,
                          &self->head_off[0], &self->head_off[1],
                          &self->bid_off[0], &self->bid_off[1],
                          &self->ask_off[0], &self->ask_off[1], &self->sizes_off,
                          &views[0][0], &views[0][1], &views[0][2], &views[0][3],
                          &views[1][0], &views[1][1], &views[1][2], &views[1][3],
                          &self->depth_max, &self->ring_off, &ring_mask, &self->ring_head_off,
                          &PyList_Type, &seqs, &PyList_Type, &ring_pos,
                          &self->stat_off[0], &self->stat_off[1], &self->stat_off[2],
                          &self->stat_off[3]))
        return -1;
    self->ring_mask = ring_mask;
    for (int k = 0; k < 2; k++)
        for (int v = 0; v < 4; v++)
            self->views[k][v] = Py_NewRef(views[k][v]);
    self->seqs = Py_NewRef(seqs);
    self->ring_pos = Py_NewRef(ring_pos);
    self->buffer = Py_NewRef(buffer);
    Py_buffer map;
    if (PyObject_GetBuffer(buffer, &map, PyBUF_WRITABLE) < 0)
        return -1;
    int ok = offset_ok(&map, self->seq_off, 8) && self->depth_max >= 0
             && offset_ok(&map, self->ring_head_off, 8)
             && (ring_mask & (ring_mask + 1)) == 0
             && offset_ok(&map, self->ring_off, (Py_ssize_t)(ring_mask + 1) * RECORD_BYTES)
             && self->book_index >= 0 && self->book_index < PyList_GET_SIZE(self->seqs)
             && PyList_GET_SIZE(self->ring_pos) == 1;
    for (int k = 0; k < 2; k++)
        ok = ok && offset_ok(&map, self->head_off[k], COPY_HEAD_WORDS * 8)
             && offset_ok(&map, self->bid_off[k], 8)
             && offset_ok(&map, self->ask_off[k], 8)
             && offset_ok(&map, self->bid_off[k] + self->sizes_off, 8)
             && offset_ok(&map, self->ask_off[k] + self->sizes_off, 8);
    for (int k = 0; k < 4; k++)
        ok = ok && offset_ok(&map, self->stat_off[k], 8);
    PyBuffer_Release(&map);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "Publisher: an offset lies outside the mapping, "
                                          "is unaligned, or the ring size is not a power of two");
        return -1;
    }
    return 0;
}

static void Publisher_dealloc(Publisher *self) {
    Py_CLEAR(self->buffer);
    for (int k = 0; k < 2; k++)
        for (int v = 0; v < 4; v++)
            Py_CLEAR(self->views[k][v]);
    Py_CLEAR(self->seqs);
    Py_CLEAR(self->ring_pos);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An int attribute of the book into *out, within [lo, hi]; -1 with an exception if not. */
static int book_int(PyObject *book, PyObject *name, long long lo, long long hi, long long *out) {
    PyObject *v = PyObject_GetAttr(book, name);
    if (v == NULL)
        return -1;
    long long x = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (x == -1 && PyErr_Occurred())
        return -1;
    if (x < lo || x > hi) {
        PyErr_Format(PyExc_OverflowError, "book.%U = %lld is outside [%lld, %lld]", name, x, lo,
                     hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* One side of `book.top_lists` (ascending towards the best level at the end) into a copy's
   price and size arrays, best first, prices negated for asks: what Book.export_top does with
   numpy. Only the first n entries are written, as there. -1 with an exception if an item is
   not an int64 (the book's invariants rule that out). */
static int export_side(PyObject *keys, PyObject *sizes, int negate, char *px, char *sz,
                       long long depth_max, int64_t *n_out) {
    Py_ssize_t len = PyList_GET_SIZE(keys);
    if (PyList_GET_SIZE(sizes) != len) {
        PyErr_SetString(PyExc_AssertionError, "book.top_lists: keys and sizes differ in length");
        return -1;
    }
    Py_ssize_t n = len < depth_max ? len : (Py_ssize_t)depth_max;
    for (Py_ssize_t i = 0; i < n; i++) {
        int64_t key, size;
        if (pyint_as_int64(PyList_GET_ITEM(keys, len - 1 - i), &key) < 0
            || pyint_as_int64(PyList_GET_ITEM(sizes, len - 1 - i), &size) < 0)
            return -1;
        if (negate && key == INT64_MIN) {
            PyErr_SetString(PyExc_OverflowError, "book.top_lists: a key past int64 negated");
            return -1;
        }
        store_word(px + 8 * i, negate ? -key : key);
        store_word(sz + 8 * i, size);
    }
    *n_out = n;
    return 0;
}

/* Step 0 of a publish: the book's best levels into the idle copy `copy`. From the book's
   `top_lists` (four lists, observer.book.Book) without the interpreter; a book without them
   (a test double) is asked to `export_top(*views)` instead, the reference. */
static int export_levels(Publisher *self, PyObject *book, char *map, int copy, int64_t *n_bids,
                         int64_t *n_asks) {
    PyObject *lists = PyObject_GetAttr(book, str_top_lists);
    if (lists != NULL) {
        int ok = PyTuple_Check(lists) && PyTuple_GET_SIZE(lists) == 4;
        for (int k = 0; ok && k < 4; k++)
            ok = PyList_Check(PyTuple_GET_ITEM(lists, k));
        int failed = !ok;
        if (!ok)
            PyErr_SetString(PyExc_TypeError, "book.top_lists must be a tuple of four lists");
        failed = failed
                 || export_side(PyTuple_GET_ITEM(lists, 0), PyTuple_GET_ITEM(lists, 1), 0,
                                map + self->bid_off[copy], map + self->bid_off[copy] + self->sizes_off,
                                self->depth_max, n_bids) < 0
                 || export_side(PyTuple_GET_ITEM(lists, 2), PyTuple_GET_ITEM(lists, 3), 1,
                                map + self->ask_off[copy], map + self->ask_off[copy] + self->sizes_off,
                                self->depth_max, n_asks) < 0;
        Py_DECREF(lists);
        return failed ? -1 : 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_AttributeError))
        return -1;
    PyErr_Clear();
    PyObject *call[6] = {NULL, book, self->views[copy][0], self->views[copy][1],
                         self->views[copy][2], self->views[copy][3]};
    PyObject *counts = PyObject_VectorcallMethod(
        str_export_top, call + 1, 5 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (counts == NULL)
        return -1;
    *n_bids = *n_asks = -1;
    if (PyTuple_Check(counts) && PyTuple_GET_SIZE(counts) == 2) {
        *n_bids = PyLong_AsLongLong(PyTuple_GET_ITEM(counts, 0));
        *n_asks = PyLong_AsLongLong(PyTuple_GET_ITEM(counts, 1));
    } else {
        PyErr_SetString(PyExc_TypeError, "export_top must return (n_bids, n_asks)");
    }
    Py_DECREF(counts);
    return PyErr_Occurred() ? -1 : 0;
}

/* What a publish reads from its arguments and the book, before it stores anything. */
typedef struct {
    uint64_t seq, pos, flags, update_id;
    int64_t n_bids, n_asks, price_exp, size_exp, exch_ts_ns, recv_ts_ns;
} PublishInputs;

/* Export the book's top into the idle copy `in->seq & 1` and read its scalars; -1 with an
   exception (and nothing visible to readers: the copy is idle) if anything is wrong. */
static int publish_inputs(Publisher *self, PyObject *const *args, char *map, PublishInputs *in) {
    PyObject *book = args[0];
    in->flags = PyLong_AsUnsignedLongLong(args[1]);
    in->recv_ts_ns = PyLong_AsLongLong(args[2]);
    in->seq = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(self->seqs, self->book_index)) + 1;
    in->pos = PyLong_AsUnsignedLongLong(PyList_GET_ITEM(self->ring_pos, 0));
    if (PyErr_Occurred())
        return -1;
    if (in->flags > 255) {
        PyErr_Format(PyExc_OverflowError, "flags %llu do not fit a byte",
                     (unsigned long long)in->flags);
        return -1;
    }
    int copy = in->seq & 1; /* the idle copy: no reader of the current sequence uses it */
    if (export_levels(self, book, map, copy, &in->n_bids, &in->n_asks) < 0)
        return -1;
    if (!(0 <= in->n_bids && in->n_bids <= self->depth_max && 0 <= in->n_asks
          && in->n_asks <= self->depth_max)) {
        PyErr_Format(PyExc_AssertionError, "export_top returned (%lld, %lld) levels for a "
                     "depth of %lld", (long long)in->n_bids, (long long)in->n_asks,
                     self->depth_max);
        return -1;
    }
    long long price_exp, size_exp, exch_ts_ns;
    if (book_int(book, str_price_exp, -128, 127, &price_exp) < 0
        || book_int(book, str_size_exp, -128, 127, &size_exp) < 0
        || book_int(book, str_exch_ts_ns, LLONG_MIN, LLONG_MAX, &exch_ts_ns) < 0)
        return -1;
    in->price_exp = price_exp, in->size_exp = size_exp, in->exch_ts_ns = exch_ts_ns;
    PyObject *update_id = PyObject_GetAttr(book, str_update_id);
    if (update_id == NULL)
        return -1;
    in->update_id = PyLong_AsUnsignedLongLong(update_id);
    Py_DECREF(update_id);
    return PyErr_Occurred() ? -1 : 0;
}

/* The stores of client/obproto/latch.publish_commit, in its order, then the book's counters. */
static void publish_stores(Publisher *self, char *map, const PublishInputs *in,
                           int64_t publish_ts_ns) {
    int copy = in->seq & 1;
    uint64_t head[COPY_HEAD_WORDS] = {in->seq, in->n_bids, in->n_asks, in->price_exp,
                                      in->size_exp, in->flags, in->update_id, in->exch_ts_ns,
                                      in->recv_ts_ns, publish_ts_ns};
    memcpy(map + self->head_off[copy], head, sizeof head);   /* 1: the idle copy's head */
    store_seq(map + self->seq_off, in->seq);                   /* 2: readers flip to it */
    char *record = map + self->ring_off + (in->pos & self->ring_mask) * RECORD_BYTES;
    store_seq(record, 0);                                      /* 3: being written */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    const char *bid = map + self->bid_off[copy], *ask = map + self->ask_off[copy];
    Py_ssize_t sz = self->sizes_off;
    RecordBody body = {(uint32_t)self->book_index, KIND_UPDATE, (uint8_t)in->flags,
                       (int8_t)in->price_exp, (int8_t)in->size_exp, in->seq, in->update_id,
                       in->exch_ts_ns, in->recv_ts_ns, publish_ts_ns,
                       in->n_bids ? load_word(bid) : 0, in->n_bids ? load_word(bid + sz) : 0,
                       in->n_asks ? load_word(ask) : 0, in->n_asks ? load_word(ask + sz) : 0};
    memcpy(record + 8, &body, sizeof body);                    /* 4: the body */
    store_seq(record, in->pos + 1);                            /* 5: complete */
    store_seq(map + self->ring_head_off, in->pos + 1);         /* 6: the shard's head */
    char *updates = map + self->stat_off[0];
    store_word(updates, load_word(updates) + 1);
    store_word(map + self->stat_off[1], publish_ts_ns);
    store_word(map + self->stat_off[2], in->recv_ts_ns);
    store_word(map + self->stat_off[3], in->exch_ts_ns);
}

/* publish(book, flags, recv_ts_ns) -> seq: client/obproto/latch.book_publisher's publish. */
static PyObject *Publisher_publish(Publisher *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "publish(book, flags, recv_ts_ns)");
        return NULL;
    }
    int64_t publish_ts_ns = clock_ns(CLOCK_REALTIME);
    Py_buffer view; /* first: a released mapping fails before the book is asked anything */
    if (PyObject_GetBuffer(self->buffer, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    PublishInputs in;
    PyObject *seq = NULL, *pos = NULL;
    if (publish_inputs(self, args, view.buf, &in) == 0) {
        seq = PyLong_FromUnsignedLongLong(in.seq);
        pos = PyLong_FromUnsignedLongLong(in.pos + 1);
    }
    if (seq == NULL || pos == NULL) {
        Py_XDECREF(seq);
        Py_XDECREF(pos);
        PyBuffer_Release(&view);
        return NULL;
    }
    publish_stores(self, view.buf, &in, publish_ts_ns); /* nothing fails from here */
    PyBuffer_Release(&view);
    PyList_SetItem(self->ring_pos, 0, pos);
    PyList_SetItem(self->seqs, self->book_index, Py_NewRef(seq));
    return seq;
}

static PyMethodDef Publisher_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Publisher_publish, METH_FASTCALL,
     "publish(book, flags, recv_ts_ns) -> seq: export the book's top into the idle copy, "
     "flip the latch, append the ring record (client/obproto/latch.py)."},
    {NULL},
};

static PyTypeObject PublisherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "obproto._latch_c.Publisher",
    .tp_basicsize = sizeof(Publisher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One book's publish path; see client/obproto/latch.book_publisher.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Publisher_init,
    .tp_dealloc = (destructor)Publisher_dealloc,
    .tp_methods = Publisher_methods,
};

/* ---------------------------------------------------------------------------- RingTaker */

typedef struct {
    PyObject_HEAD
    PyObject *buffer;       /* acquired per call: a released or closed mapping raises */
    Py_ssize_t ring_off;
    uint64_t ring_mask;
    Py_ssize_t head_off;    /* the shard's head word */
    PyTypeObject *record_type; /* a tuple subclass without slots (obclient's Update) */
    PyObject *lapped;       /* what take returns for an overwritten record */
} RingTaker;

static int RingTaker_init(RingTaker *self, PyObject *args, PyObject *kwds) {
    PyObject *buffer, *record_type, *lapped;
    unsigned long long ring_mask;
    if (!PyArg_ParseTuple(args, "OnKnO!O:RingTaker", &buffer, &self->ring_off, &ring_mask,
                          &self->head_off, &PyType_Type, &record_type, &lapped))
        return -1;
    PyTypeObject *type = (PyTypeObject *)record_type;
    if (!PyType_IsSubtype(type, &PyTuple_Type) || type->tp_basicsize != PyTuple_Type.tp_basicsize
        || type->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError, "record_type must be a tuple subclass without slots");
        return -1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0)
        return -1;
    int ok = (ring_mask & (ring_mask + 1)) == 0 && offset_ok(&view, self->head_off, 8)
             && offset_ok(&view, self->ring_off, (Py_ssize_t)(ring_mask + 1) * RECORD_BYTES);
    PyBuffer_Release(&view);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "RingTaker: the ring or head lies outside the "
                                          "mapping, or its size is not a power of two");
        return -1;
    }
    self->ring_mask = ring_mask;
    Py_XSETREF(self->buffer, Py_NewRef(buffer));
    Py_XSETREF(self->record_type, (PyTypeObject *)Py_NewRef(record_type));
    Py_XSETREF(self->lapped, Py_NewRef(lapped));
    return 0;
}

static void RingTaker_dealloc(RingTaker *self) {
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->record_type);
    Py_CLEAR(self->lapped);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *record_object(PyTypeObject *type, const RecordBody *r) {
    PyObject *out = type->tp_alloc(type, 14);
    if (out == NULL)
        return NULL;
    PyObject *items[14] = {
        PyLong_FromUnsignedLong(r->book_index), PyLong_FromLong(r->kind),
        PyLong_FromLong(r->flags), PyLong_FromLong(r->price_exp), PyLong_FromLong(r->size_exp),
        PyLong_FromUnsignedLongLong(r->book_seq), PyLong_FromUnsignedLongLong(r->update_id),
        PyLong_FromLongLong(r->exch_ts_ns), PyLong_FromLongLong(r->recv_ts_ns),
        PyLong_FromLongLong(r->publish_ts_ns), PyLong_FromLongLong(r->bid_px),
        PyLong_FromLongLong(r->bid_sz), PyLong_FromLongLong(r->ask_px),
        PyLong_FromLongLong(r->ask_sz)};
    int failed = 0;
    for (int i = 0; i < 14; i++) {
        failed |= items[i] == NULL;
        PyTuple_SET_ITEM(out, i, items[i]);
    }
    if (failed) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

/* Record `pos` of the ring in `view` into *body: 0 whole, 1 not written yet, 2 lapped. */
static int take_record(RingTaker *self, const Py_buffer *view, uint64_t pos, RecordBody *body) {
    const char *record = (const char *)view->buf + self->ring_off
                         + (pos & self->ring_mask) * RECORD_BYTES;
    uint64_t seq = load_seq(record);
    if (seq != pos + 1)
        return seq < pos + 1 ? 1 : 2;
    memcpy(body, record + 8, sizeof *body);
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return load_seq(record) == pos + 1 ? 0 : 2;
}

/* Loads only, until the head word in `view` is not pos (1) or spin_ns pass (0). */
static int spin_head(RingTaker *self, const Py_buffer *view, uint64_t pos, int64_t spin_ns) {
    const char *head = (const char *)view->buf + self->head_off;
    int64_t deadline_ns = clock_ns(CLOCK_MONOTONIC) + spin_ns;
    for (;;) {
        for (int i = 0; i < SPIN_CHECK_CLOCK_EVERY; i++)
            if (load_seq(head) != pos)
                return 1;
        if (clock_ns(CLOCK_MONOTONIC) >= deadline_ns)
            return 0;
    }
}

static PyObject *take_result(RingTaker *self, int state, const RecordBody *body) {
    if (state == 1)
        Py_RETURN_NONE;
    if (state == 2)
        return Py_NewRef(self->lapped);
    return record_object(self->record_type, body);
}

/* take(pos) -> record | None (not written yet) | lapped: ring_reader's take, one call. */
static PyObject *RingTaker_take(RingTaker *self, PyObject *arg) {
    unsigned long long pos = PyLong_AsUnsignedLongLong(arg);
    if (pos == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(self->buffer, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    RecordBody body;
    int state = take_record(self, &view, pos, &body);
    PyBuffer_Release(&view);
    return take_result(self, state, &body);
}

/* Parse (pos, spin_ns) and acquire the mapping; -1 with an exception if either fails. */
static int spin_args(RingTaker *self, PyObject *const *args, Py_ssize_t nargs, const char *usage,
                     Py_buffer *view, unsigned long long *pos, long long *spin_ns) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *pos = PyLong_AsUnsignedLongLong(args[0]);
    *spin_ns = PyLong_AsLongLong(args[1]);
    if (PyErr_Occurred())
        return -1;
    return PyObject_GetBuffer(self->buffer, view, PyBUF_SIMPLE);
}

/* spin(pos, spin_ns) -> bool: until the head word is not pos (True) or spin_ns pass (False).
   Holds the GIL: callers spin in slices so other threads and signals get in. */
static PyObject *RingTaker_spin(RingTaker *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    unsigned long long pos;
    long long spin_ns;
    if (spin_args(self, args, nargs, "spin(pos, spin_ns)", &view, &pos, &spin_ns) < 0)
        return NULL;
    int moved = spin_head(self, &view, pos, spin_ns);
    PyBuffer_Release(&view);
    return PyBool_FromLong(moved);
}

/* spin_take(pos, spin_ns) -> record | lapped once the head passes pos; None after spin_ns. */
static PyObject *RingTaker_spin_take(RingTaker *self, PyObject *const *args, Py_ssize_t nargs) {
    Py_buffer view;
    unsigned long long pos;
    long long spin_ns;
    if (spin_args(self, args, nargs, "spin_take(pos, spin_ns)", &view, &pos, &spin_ns) < 0)
        return NULL;
    RecordBody body;
    int state = spin_head(self, &view, pos, spin_ns) ? take_record(self, &view, pos, &body) : 1;
    PyBuffer_Release(&view);
    return take_result(self, state, &body);
}

static PyMethodDef RingTaker_methods[] = {
    {"take", (PyCFunction)RingTaker_take, METH_O,
     "take(pos) -> record, None if not written yet, or the lapped marker if overwritten."},
    {"spin", (PyCFunction)(void (*)(void))RingTaker_spin, METH_FASTCALL,
     "spin(pos, spin_ns) -> True once the head word is not pos, False after spin_ns."},
    {"spin_take", (PyCFunction)(void (*)(void))RingTaker_spin_take, METH_FASTCALL,
     "spin_take(pos, spin_ns) -> spin, then take: the record (or lapped); None after spin_ns."},
    {NULL},
};

static PyTypeObject RingTakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "obproto._latch_c.RingTaker",
    .tp_basicsize = sizeof(RingTaker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One ring's record take and head spin; see client/obproto/latch.ring_reader.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RingTaker_init,
    .tp_dealloc = (destructor)RingTaker_dealloc,
    .tp_methods = RingTaker_methods,
};

/* ---------------------------------------------------------------------------- module */

static struct PyModuleDef latch_module = {
    PyModuleDef_HEAD_INIT, "obproto._latch_c",
    "The hot paths of client/obproto/latch.py, compiled (see that module).", -1, NULL,
};

PyMODINIT_FUNC PyInit__latch_c(void) {
    if (PyType_Ready(&PublisherType) < 0 || PyType_Ready(&RingTakerType) < 0)
        return NULL;
    str_export_top = PyUnicode_InternFromString("export_top");
    str_top_lists = PyUnicode_InternFromString("top_lists");
    str_price_exp = PyUnicode_InternFromString("price_exp");
    str_size_exp = PyUnicode_InternFromString("size_exp");
    str_update_id = PyUnicode_InternFromString("update_id");
    str_exch_ts_ns = PyUnicode_InternFromString("exch_ts_ns");
    if (!str_export_top || !str_top_lists || !str_price_exp || !str_size_exp || !str_update_id || !str_exch_ts_ns)
        return NULL;
    PyObject *m = PyModule_Create(&latch_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Publisher", (PyObject *)&PublisherType) < 0
        || PyModule_AddObjectRef(m, "RingTaker", (PyObject *)&RingTakerType) < 0
        || PyModule_AddIntConstant(m, "RECORD_BYTES", RECORD_BYTES) < 0
        || PyModule_AddIntConstant(m, "KIND_UPDATE", KIND_UPDATE) < 0
        || PyModule_AddStringConstant(m, "RECORD_BODY_FORMAT", "<IBBbbQQqqqqqqq") < 0
        || PyModule_AddStringConstant(m, "COPY_HEAD_FORMAT", "<QqqqqQQqqq") < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
