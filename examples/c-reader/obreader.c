/* obreader: an observer client in C11 and libc only, written from docs/PROTOCOL.md.
 *
 *   obreader [--socket PATH] [--stale-after S] snapshot NAME [--depth N] [--count K]
 *   obreader [--socket PATH] [--stale-after S] follow NAME [--count N] [--with-snapshot]
 *   obreader layout
 *
 * snapshot prints the book as one JSON line, byte for byte what `obctl snapshot NAME --json
 * --depth N` prints for the same `seq`; with --count K it prints K lines, one per new `seq`
 * (waiting on the wake fds between them). follow prints one JSON line per ring record of the
 * book from the ring head on (N records, or until the observer goes); --with-snapshot prints
 * the book first, read after the head, and then only the records newer than that copy. layout prints the layout
 * constants compiled in, for a test to compare with the spec.
 *
 * What it does, in the order of PROTOCOL.md: connect to the control socket, send `hello`
 * (msgpack written by hand), receive `welcome` and the segment and wake fds (SCM_RIGHTS), map
 * the segment read-only, validate its header (magic, version, hash, every size recomputed),
 * read a book through the latch, follow the shard's ring waiting on the wake fd in its own
 * epoll (EPOLLET, never read), and see the observer go (socket hang-up, segment closed,
 * heartbeat too old). Exit codes: 0 done, 1 no observer, 2 bad command line or book,
 * 3 refused by the observer, 4 the observer went away, 5 segment or protocol not understood,
 * 6 a book could not be read (no stable copy within the latch retry bound, out of memory).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "layout.h"

enum { EXIT_OK, EXIT_NO_OBSERVER, EXIT_USAGE, EXIT_REFUSED, EXIT_GONE, EXIT_INCOMPATIBLE,
       EXIT_FAILED };

#define DEPTH_DEFAULT 10
#define LIVENESS_CHECK_MS 250     /* a wait never sleeps longer: socket, state, heartbeat */
#define HANDSHAKE_TIMEOUT_MS 5000
#define FDS_MAX 253               /* Linux SCM_MAX_FD */
#define SOCK_TAG UINT32_MAX       /* epoll data of the control socket (wake fds: shard index) */

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("obreader: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ------------------------------------------------------------------ shared-memory loads */

/* An aligned 8-byte word another process stores: one atomic load (a plain mov on x86-64). */
static uint64_t load_acquire(const char *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)(const void *)p, memory_order_acquire);
}

static uint64_t load_relaxed(const char *p) {
    return atomic_load_explicit((const _Atomic uint64_t *)(const void *)p, memory_order_relaxed);
}

static void copy_words(uint64_t *dst, const char *src, size_t n_words) {
    for (size_t i = 0; i < n_words; i++)
        dst[i] = load_relaxed(src + 8 * i);
}

/* ------------------------------------------------------------------ msgpack (the subset) */

typedef struct {
    const uint8_t *p, *end;
    int bad;
} Mp;

static uint64_t mp_be(Mp *m, int n) {
    if (m->end - m->p < n) {
        m->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | *m->p++;
    return v;
}

static int mp_byte(Mp *m) {
    return m->p < m->end ? *m->p++ : (m->bad = 1, 0);
}

/* An integer of any msgpack width; *neg set for a negative one. */
static uint64_t mp_int(Mp *m, int *neg) {
    int b = mp_byte(m);
    *neg = 0;
    if (b <= 0x7f) return (uint64_t)b;
    if (b >= 0xe0) { *neg = 1; return (uint64_t)(int64_t)(int8_t)b; }
    switch (b) {
    case 0xcc: return mp_be(m, 1);
    case 0xcd: return mp_be(m, 2);
    case 0xce: return mp_be(m, 4);
    case 0xcf: return mp_be(m, 8);
    case 0xd0: *neg = 1; return (uint64_t)(int64_t)(int8_t)mp_be(m, 1);
    case 0xd1: *neg = 1; return (uint64_t)(int64_t)(int16_t)mp_be(m, 2);
    case 0xd2: *neg = 1; return (uint64_t)(int64_t)(int32_t)mp_be(m, 4);
    case 0xd3: *neg = 1; return mp_be(m, 8);
    }
    m->bad = 1;
    return 0;
}

static uint64_t mp_uint(Mp *m) {
    int neg;
    uint64_t v = mp_int(m, &neg);
    if (neg && (int64_t)v < 0) m->bad = 1;
    return v;
}

static double mp_float(Mp *m) {
    if (m->p < m->end && (*m->p == 0xca || *m->p == 0xcb)) {
        int b = *m->p++;
        uint64_t bits = mp_be(m, b == 0xca ? 4 : 8);
        if (b == 0xca) { float f; uint32_t u = (uint32_t)bits; memcpy(&f, &u, 4); return f; }
        double d;
        memcpy(&d, &bits, 8);
        return d;
    }
    int neg;
    uint64_t v = mp_int(m, &neg);       /* a float field may come as an int */
    return neg ? (double)(int64_t)v : (double)v;
}

static int mp_bool(Mp *m) {
    int b = mp_byte(m);
    if (b != 0xc2 && b != 0xc3) m->bad = 1;
    return b == 0xc3;
}

static uint32_t mp_array(Mp *m) {
    int b = mp_byte(m);
    if ((b & 0xf0) == 0x90) return b & 0x0f;
    if (b == 0xdc) return (uint32_t)mp_be(m, 2);
    if (b == 0xdd) return (uint32_t)mp_be(m, 4);
    m->bad = 1;
    return 0;
}

/* A str: its bytes (not NUL-terminated) and length. */
static const char *mp_str(Mp *m, uint32_t *len) {
    int b = mp_byte(m);
    if ((b & 0xe0) == 0xa0) *len = b & 0x1f;
    else if (b == 0xd9) *len = (uint32_t)mp_be(m, 1);
    else if (b == 0xda) *len = (uint32_t)mp_be(m, 2);
    else if (b == 0xdb) *len = (uint32_t)mp_be(m, 4);
    else { m->bad = 1; *len = 0; return ""; }
    if ((uint64_t)(m->end - m->p) < *len) { m->bad = 1; *len = 0; return ""; }
    const char *s = (const char *)m->p;
    m->p += *len;
    return s;
}

/* ------------------------------------------------------------------ control socket */

typedef struct {
    int sock;
    uint8_t buf[MSG_REPLY_BYTES_MAX + 4];
    size_t have;
    int64_t last_sent_ns;       /* CLOCK_MONOTONIC: the server's idle clock restarts here */
    double idle_s;              /* from welcome; 0: no limit */
    char last_error[600];       /* an unasked `error` (req_id 0), e.g. SHUTTING_DOWN */
} Control;

typedef struct {
    uint64_t version, pid, generation, segment_bytes, layout_version, layout_hash, n_eventfds;
    int fds_passed;
    double heartbeat_period_s, idle_s;
} Welcome;

static const char *error_name(uint64_t code) {
    static const char *names[] = {"?", "BAD_FRAME", "BAD_MSGPACK", "BAD_MESSAGE",
        "UNKNOWN_TYPE", "VERSION_MISMATCH", "NOT_READY", "UNKNOWN_BOOK", "AMBIGUOUS_BOOK",
        "LIMIT", "DENIED", "BUSY", "INTERNAL", "IDLE", "SHUTTING_DOWN"};
    return code < sizeof names / sizeof *names ? names[code] : "?";
}

/* socket path: --socket, else $OBSERVER_SOCKET, else observer.sock in $XDG_RUNTIME_DIR if it
   is a directory, else in the temp dir: $TMPDIR, $TEMP, $TMP, /tmp, /var/tmp, /usr/tmp, the
   first that is a writable directory (Python's tempfile.gettempdir()), else the cwd. */
static int usable_dir(const char *dir, int need_write) {
    struct stat st;
    return dir && *dir && stat(dir, &st) == 0 && S_ISDIR(st.st_mode)
           && (!need_write || access(dir, W_OK | X_OK) == 0);
}

static void default_socket_path(char *out, size_t size) {
    const char *env = getenv("OBSERVER_SOCKET");
    if (env && *env) { snprintf(out, size, "%s", env); return; }
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (usable_dir(runtime, 0)) { snprintf(out, size, "%s/observer.sock", runtime); return; }
    const char *dirs[] = {getenv("TMPDIR"), getenv("TEMP"), getenv("TMP"), "/tmp", "/var/tmp",
                          "/usr/tmp"};
    for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++)
        if (usable_dir(dirs[i], 1)) { snprintf(out, size, "%s/observer.sock", dirs[i]); return; }
    snprintf(out, size, "observer.sock");
}

static int connect_socket(const char *path) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof addr.sun_path)
        die(EXIT_USAGE, "socket path %s is longer than %zu bytes", path, sizeof addr.sun_path - 1);
    strcpy(addr.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die(EXIT_NO_OBSERVER, "socket: %s", strerror(errno));
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        die(EXIT_NO_OBSERVER, "no observer at %s (%s)", path, strerror(errno));
    return fd;
}

static void send_frame(Control *c, const uint8_t *payload, size_t n) {
    uint8_t frame[64];
    if (n + 4 > sizeof frame) die(EXIT_USAGE, "request too long");
    frame[0] = n & 0xff, frame[1] = n >> 8 & 0xff, frame[2] = n >> 16 & 0xff, frame[3] = n >> 24;
    memcpy(frame + 4, payload, n);
    /* A refusal may close the socket before our hello is read: EPIPE, not SIGPIPE; the
       server's `error` is still there to read. */
    (void)send(c->sock, frame, n + 4, MSG_NOSIGNAL | MSG_DONTWAIT);
    c->last_sent_ns = clock_ns(CLOCK_MONOTONIC);
}

/* ["hello", 1, 2, 2, "obreader", true]: version 2 only (we ping). */
static void send_hello(Control *c) {
    static const uint8_t hello[] = {0x96, 0xa5, 'h', 'e', 'l', 'l', 'o', 0x01, 0x02, 0x02,
                                    0xa8, 'o', 'b', 'r', 'e', 'a', 'd', 'e', 'r', 0xc3};
    send_frame(c, hello, sizeof hello);
}

/* ["ping", 0]: the constant 11-byte frame. */
static void send_ping(Control *c) {
    static const uint8_t ping[] = {0x92, 0xa4, 'p', 'i', 'n', 'g', 0x00};
    send_frame(c, ping, sizeof ping);
}

/* Receive what is there (blocking or not); fds passed with it are appended to fds.
   Returns bytes read, 0 at end of stream, -1 with errno. */
static ssize_t receive(Control *c, int flags, int *fds, int *n_fds) {
    if (c->have == sizeof c->buf) die(EXIT_INCOMPATIBLE, "reply frame over the limit");
    struct iovec iov = {c->buf + c->have, sizeof c->buf - c->have};
    union { char space[CMSG_SPACE(FDS_MAX * sizeof(int))]; struct cmsghdr align; } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = sizeof control.space};
    ssize_t n = recvmsg(c->sock, &msg, MSG_CMSG_CLOEXEC | flags);
    if (n < 0) return -1;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
        if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
            if (fds && *n_fds < FDS_MAX) fds[(*n_fds)++] = fd;
            else close(fd);
        }
    }
    if (msg.msg_flags & MSG_CTRUNC) die(EXIT_INCOMPATIBLE, "passed fds were truncated");
    c->have += (size_t)n;
    return n;
}

/* The next complete frame's payload (valid until the next receive), or NULL. */
static const uint8_t *next_frame(Control *c, size_t *len, size_t *consumed) {
    if (c->have < 4) return NULL;
    uint32_t n = c->buf[0] | c->buf[1] << 8 | c->buf[2] << 16 | (uint32_t)c->buf[3] << 24;
    if (n > MSG_REPLY_BYTES_MAX) die(EXIT_INCOMPATIBLE, "reply frame of %u bytes", n);
    if (c->have < 4 + (size_t)n) return NULL;
    *len = n;
    *consumed = 4 + (size_t)n;
    return c->buf + 4;
}

static void drop_frame(Control *c, size_t consumed) {
    memmove(c->buf, c->buf + consumed, c->have - consumed);
    c->have -= consumed;
}

/* If the payload is an `error`, keep "NAME: message" and return its code; else 0. */
static uint64_t read_error(Control *c, const uint8_t *payload, size_t len, uint64_t *req_id) {
    Mp m = {payload, payload + len, 0};
    uint32_t n = mp_array(&m), type_len;
    const char *type = mp_str(&m, &type_len);
    if (m.bad || n < 4 || type_len != 5 || memcmp(type, "error", 5) != 0) return 0;
    *req_id = mp_uint(&m);
    uint64_t code = mp_uint(&m);
    uint32_t text_len;
    const char *text = mp_str(&m, &text_len);
    if (m.bad) die(EXIT_INCOMPATIBLE, "malformed error message from the observer");
    snprintf(c->last_error, sizeof c->last_error, "%s: %.*s", error_name(code), (int)text_len,
             text);
    return code;
}

static int read_welcome(const uint8_t *payload, size_t len, Welcome *w) {
    Mp m = {payload, payload + len, 0};
    uint32_t n = mp_array(&m), type_len, name_len;
    const char *type = mp_str(&m, &type_len);
    if (m.bad || type_len != 7 || memcmp(type, "welcome", 7) != 0) return 0;
    if (n < 12) die(EXIT_INCOMPATIBLE, "welcome with %u fields, expected at least 12", n);
    (void)mp_uint(&m);                                  /* req_id */
    w->version = mp_uint(&m);
    (void)mp_str(&m, &name_len);                        /* server_name */
    w->pid = mp_uint(&m);
    w->generation = mp_uint(&m);
    w->segment_bytes = mp_uint(&m);
    w->layout_version = mp_uint(&m);
    w->layout_hash = mp_uint(&m);
    w->n_eventfds = mp_uint(&m);
    w->fds_passed = mp_bool(&m);
    w->heartbeat_period_s = mp_float(&m);
    w->idle_s = n >= 13 ? mp_float(&m) : 0.0;          /* version 2; trailing fields ignored */
    if (m.bad) die(EXIT_INCOMPATIBLE, "malformed welcome from the observer");
    return 1;
}

static int wait_readable(int fd, int timeout_ms) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    int n = epoll_wait(ep, &ev, 1, timeout_ms);
    close(ep);
    return n > 0;
}

/* hello -> welcome and its fds (segment, then one wake fd per shard). */
static int handshake(Control *c, const char *path, Welcome *w, int *fds) {
    int n_fds = 0;
    send_hello(c);
    int64_t deadline_ns = clock_ns(CLOCK_MONOTONIC) + HANDSHAKE_TIMEOUT_MS * 1000000LL;
    for (;;) {
        size_t len, consumed;
        const uint8_t *payload;
        while ((payload = next_frame(c, &len, &consumed)) != NULL) {
            uint64_t req_id = 0, code = read_error(c, payload, len, &req_id);
            if (code) die(EXIT_REFUSED, "refused by the observer: %s", c->last_error);
            int ok = read_welcome(payload, len, w);
            drop_frame(c, consumed);
            if (ok) return n_fds;
        }
        int left_ms = (int)((deadline_ns - clock_ns(CLOCK_MONOTONIC)) / 1000000);
        if (left_ms <= 0 || !wait_readable(c->sock, left_ms))
            die(EXIT_NO_OBSERVER, "no welcome from %s within %d ms", path, HANDSHAKE_TIMEOUT_MS);
        ssize_t got = receive(c, 0, fds, &n_fds);
        if (got <= 0)
            die(EXIT_NO_OBSERVER, "observer at %s closed the connection during the handshake%s%s",
                path, got < 0 ? ": " : "", got < 0 ? strerror(errno) : "");
    }
}

/* Without blocking: read what the observer pushed. A reason string if it hung up, else NULL. */
static const char *service_socket(Control *c) {
    for (;;) {
        ssize_t got = receive(c, MSG_DONTWAIT, NULL, NULL);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return NULL;
        size_t len, consumed;
        const uint8_t *payload;
        while ((payload = next_frame(c, &len, &consumed)) != NULL) {
            uint64_t req_id = 0;
            (void)read_error(c, payload, len, &req_id);  /* other messages: not ours to read */
            drop_frame(c, consumed);
        }
        if (got == 0) return "control socket closed by the observer";
        if (got < 0) return "control socket failed";
    }
}

/* ------------------------------------------------------------------ the segment */

typedef struct {
    const char *map;
    size_t map_bytes;
    uint64_t books_n, shards_n, depth_max, ring_records;
    uint64_t descs_offset, stats_offset, shards_offset, slots_offset, slot_bytes;
    uint64_t rings_offset, ring_bytes, segment_bytes, copy_bytes;
} Segment;

static uint64_t header_u64(const char *map, size_t offset) {
    return load_relaxed(map + offset);
}

static uint32_t header_u32(const char *map, size_t offset) {
    uint32_t v;
    memcpy(&v, map + offset, 4);    /* written once before the fd was handed out */
    return v;
}

/* Recompute every offset and size from the four numbers, per the spec's formulas. */
static void plan_geometry(Segment *s) {
    s->descs_offset = ALIGN_UP(HEADER_BYTES);
    s->stats_offset = ALIGN_UP(s->descs_offset + s->books_n * BOOK_DESC_BYTES);
    s->shards_offset = ALIGN_UP(s->stats_offset + s->books_n * BOOK_STATS_BYTES);
    s->slots_offset = ALIGN_UP(s->shards_offset + s->shards_n * SHARD_BYTES);
    s->copy_bytes = COPY_BYTES(s->depth_max);
    s->slot_bytes = SLOT_BYTES(s->depth_max);
    s->rings_offset = ALIGN_UP(s->slots_offset + s->books_n * s->slot_bytes);
    s->ring_bytes = RING_BYTES(s->ring_records);
    s->segment_bytes = s->rings_offset + s->shards_n * s->ring_bytes;
}

static void check_field(const char *map, const char *name, size_t offset, uint64_t expected) {
    uint64_t got = header_u64(map, offset);
    if (got != expected)
        die(EXIT_INCOMPATIBLE, "segment header %s is %" PRIu64 ", the layout gives %" PRIu64,
            name, got, expected);
}

/* The spec's order: size, magic, version, hash, limits, then every size and offset. */
static void validate(Segment *s, size_t map_bytes) {
    const char *map = s->map;
    if (map_bytes < HEADER_BYTES)
        die(EXIT_INCOMPATIBLE, "segment is %zu bytes, smaller than its header", map_bytes);
    if (header_u64(map, H_MAGIC) != LAYOUT_MAGIC)
        die(EXIT_INCOMPATIBLE, "bad magic 0x%016" PRIx64 ": not an observer segment",
            header_u64(map, H_MAGIC));
    if (header_u32(map, H_LAYOUT_VERSION) != LAYOUT_VERSION)
        die(EXIT_INCOMPATIBLE, "segment layout version %u, this reader knows %u",
            header_u32(map, H_LAYOUT_VERSION), LAYOUT_VERSION);
    if (header_u32(map, H_HEADER_BYTES) != HEADER_BYTES)
        die(EXIT_INCOMPATIBLE, "header_bytes %u, expected %u", header_u32(map, H_HEADER_BYTES),
            HEADER_BYTES);
    if (header_u64(map, H_LAYOUT_HASH) != LAYOUT_HASH)
        die(EXIT_INCOMPATIBLE, "segment layout hash 0x%016" PRIx64 ", this reader knows 0x%016"
            PRIx64 " for version %u", header_u64(map, H_LAYOUT_HASH), (uint64_t)LAYOUT_HASH,
            LAYOUT_VERSION);
    s->books_n = header_u32(map, H_BOOKS_N), s->shards_n = header_u32(map, H_SHARDS_N);
    s->depth_max = header_u32(map, H_DEPTH_MAX), s->ring_records = header_u32(map, H_RING_RECORDS);
    if (s->books_n < 1 || s->books_n > BOOKS_MAX || s->shards_n < 1 || s->shards_n > SHARDS_MAX
        || s->depth_max < 1 || s->depth_max > DEPTH_MAX_LIMIT
        || s->ring_records < RING_RECORDS_MIN || s->ring_records > RING_RECORDS_MAX
        || (s->ring_records & (s->ring_records - 1)))
        die(EXIT_INCOMPATIBLE, "segment geometry out of limits: books_n %" PRIu64 " shards_n %"
            PRIu64 " depth_max %" PRIu64 " ring_records %" PRIu64, s->books_n, s->shards_n,
            s->depth_max, s->ring_records);
    plan_geometry(s);
    check_field(map, "descs_offset", H_DESCS_OFFSET, s->descs_offset);
    check_field(map, "stats_offset", H_STATS_OFFSET, s->stats_offset);
    check_field(map, "shards_offset", H_SHARDS_OFFSET, s->shards_offset);
    check_field(map, "slots_offset", H_SLOTS_OFFSET, s->slots_offset);
    check_field(map, "slot_bytes", H_SLOT_BYTES, s->slot_bytes);
    check_field(map, "rings_offset", H_RINGS_OFFSET, s->rings_offset);
    check_field(map, "ring_bytes", H_RING_BYTES, s->ring_bytes);
    check_field(map, "segment_bytes", H_SEGMENT_BYTES, s->segment_bytes);
    if (s->segment_bytes > map_bytes)
        die(EXIT_INCOMPATIBLE, "segment declares %" PRIu64 " bytes, the mapping has %zu",
            s->segment_bytes, map_bytes);
}

static void map_segment(Segment *s, int fd, const Welcome *w) {
    struct stat st;
    if (fstat(fd, &st) < 0) die(EXIT_INCOMPATIBLE, "fstat segment: %s", strerror(errno));
    s->map_bytes = (size_t)st.st_size;
    if (s->map_bytes < HEADER_BYTES)
        die(EXIT_INCOMPATIBLE, "segment is %zu bytes, smaller than its header", s->map_bytes);
    void *map = mmap(NULL, s->map_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) die(EXIT_INCOMPATIBLE, "mmap segment: %s", strerror(errno));
    s->map = map;
    validate(s, s->map_bytes);
    if (w->layout_version != LAYOUT_VERSION || w->layout_hash != LAYOUT_HASH
        || w->segment_bytes != s->segment_bytes || w->n_eventfds != s->shards_n
        || w->generation != header_u64(s->map, H_GENERATION))
        die(EXIT_INCOMPATIBLE, "welcome disagrees with the segment header");
}

typedef struct {
    uint32_t index, shard;
    char name[16 + 1 + 48 + 1];  /* exchange:symbol */
    const char *exchange, *symbol;
    size_t exchange_len, symbol_len;
} BookDesc;

static BookDesc book_desc(const Segment *s, uint32_t index) {
    const char *d = s->map + s->descs_offset + (size_t)index * BOOK_DESC_BYTES;
    BookDesc b = {.index = index, .exchange = d + D_EXCHANGE, .symbol = d + D_SYMBOL};
    b.exchange_len = strnlen(b.exchange, D_EXCHANGE_BYTES);
    b.symbol_len = strnlen(b.symbol, D_SYMBOL_BYTES);
    b.shard = header_u32(d, D_SHARD_INDEX);
    snprintf(b.name, sizeof b.name, "%.*s:%.*s", (int)b.exchange_len, b.exchange,
             (int)b.symbol_len, b.symbol);
    return b;
}

/* `SYMBOL` (one venue has it) or `exchange:SYMBOL`, without regard to (ASCII) case. */
static BookDesc resolve(const Segment *s, const char *name) {
    const char *colon = strchr(name, ':');
    BookDesc hit = {0};
    int hits = 0;
    char choices[1024] = "";
    for (uint32_t i = 0; i < s->books_n; i++) {
        BookDesc b = book_desc(s, i);
        int match = colon ? strcasecmp(name, b.name) == 0
                          : strlen(name) == b.symbol_len
                                && strncasecmp(name, b.symbol, b.symbol_len) == 0;
        if (!match) continue;
        if (hits++) strncat(choices, ", ", sizeof choices - strlen(choices) - 1);
        strncat(choices, b.name, sizeof choices - strlen(choices) - 1);
        hit = b;
    }
    if (hits == 0) die(EXIT_USAGE, "unknown book '%s'", name);
    if (hits > 1) die(EXIT_USAGE, "book '%s' is ambiguous: say one of %s", name, choices);
    return hit;
}

/* ------------------------------------------------------------------ the latch */

typedef struct {
    uint64_t seq;
    uint64_t head[COPY_HEAD_WORDS];  /* book_seq, n_bids, n_asks, price_exp, size_exp, ... */
    int64_t n_bids, n_asks;          /* levels copied (clamped to the depth asked) */
    int64_t *bid_px, *bid_sz, *ask_px, *ask_sz;
} Snapshot;

static const char *slot_of(const Segment *s, uint32_t book) {
    return s->map + s->slots_offset + (size_t)book * s->slot_bytes;
}

static int64_t clamp(int64_t n, int64_t hi) {
    return n < 0 ? 0 : n > hi ? hi : n;
}

/* Load seq (acquire), copy copy `seq & 1` (word loads), acquire fence, load seq again: the
   copy is kept if seq did not move. The arrays in `snap` hold depth_max levels. */
static void latch_read(const Segment *s, uint32_t book, int64_t depth, Snapshot *snap) {
    const char *slot = slot_of(s, book);
    int64_t d = (int64_t)s->depth_max;
    for (int tries = 0; tries < LATCH_RETRIES_MAX; tries++) {
        uint64_t seq = load_acquire(slot + SLOT_SEQ);
        const char *copy = slot + SLOT_COPIES + (seq & 1) * s->copy_bytes;
        copy_words(snap->head, copy, COPY_HEAD_WORDS);
        int64_t n_bids = clamp((int64_t)snap->head[C_N_BIDS], depth);
        int64_t n_asks = clamp((int64_t)snap->head[C_N_ASKS], depth);
        copy_words((uint64_t *)snap->bid_px, copy + COPY_HEAD_BYTES, (size_t)n_bids);
        copy_words((uint64_t *)snap->bid_sz, copy + COPY_HEAD_BYTES + 8 * d, (size_t)n_bids);
        copy_words((uint64_t *)snap->ask_px, copy + COPY_HEAD_BYTES + 16 * d, (size_t)n_asks);
        copy_words((uint64_t *)snap->ask_sz, copy + COPY_HEAD_BYTES + 24 * d, (size_t)n_asks);
        atomic_thread_fence(memory_order_acquire);   /* the copy's loads before the re-read */
        if (load_relaxed(slot + SLOT_SEQ) != seq) continue;
        if (snap->head[C_BOOK_SEQ] != seq)
            die(EXIT_INCOMPATIBLE, "book %u: copy of seq %" PRIu64 " kept under seq %" PRIu64,
                book, snap->head[C_BOOK_SEQ], seq);
        snap->seq = seq, snap->n_bids = n_bids, snap->n_asks = n_asks;
        return;
    }
    die(EXIT_FAILED, "book %u: no stable copy after %d tries", book, LATCH_RETRIES_MAX);
}

/* Bids strictly falling, asks strictly rising, sizes positive, not crossed. */
static const char *check_book(const Snapshot *snap) {
    for (int64_t i = 0; i < snap->n_bids; i++)
        if (snap->bid_sz[i] <= 0 || (i && snap->bid_px[i] >= snap->bid_px[i - 1]))
            return "bids not strictly falling with positive sizes";
    for (int64_t i = 0; i < snap->n_asks; i++)
        if (snap->ask_sz[i] <= 0 || (i && snap->ask_px[i] <= snap->ask_px[i - 1]))
            return "asks not strictly rising with positive sizes";
    if (snap->n_bids && snap->n_asks && snap->bid_px[0] >= snap->ask_px[0]) return "crossed";
    return NULL;
}

/* ------------------------------------------------------------------ JSON output */

/* value * 10**exp, exactly, never in exponent form (Python: format(Decimal(v).scaleb(e), "f")). */
static void put_decimal(int64_t value, int64_t exp) {
    char digits[24];
    uint64_t mag = value < 0 ? 0 - (uint64_t)value : (uint64_t)value;
    int n = snprintf(digits, sizeof digits, "%" PRIu64, mag);
    if (value < 0) putchar('-');
    if (exp >= 0) {
        fputs(digits, stdout);
        for (int64_t i = 0; i < exp && mag; i++) putchar('0');
        return;
    }
    int64_t frac = -exp;
    if (n <= frac) {
        fputs("0.", stdout);
        for (int64_t i = n; i < frac; i++) putchar('0');
        fputs(digits, stdout);
    } else {
        printf("%.*s.%s", (int)(n - frac), digits, digits + n - frac);
    }
}

/* A JSON string as Python's json.dumps writes it (ensure_ascii: \uXXXX past ASCII). */
static void put_json_string(const char *s) {
    putchar('"');
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        uint32_t cp = *p++;
        int more = cp >= 0xf0 ? 3 : cp >= 0xe0 ? 2 : cp >= 0xc0 ? 1 : 0;
        if (more) cp &= 0x3f >> more;
        for (; more && (*p & 0xc0) == 0x80; more--) cp = cp << 6 | (*p++ & 0x3f);
        if (cp == '"' || cp == '\\') printf("\\%c", (char)cp);
        else if (cp == '\n') fputs("\\n", stdout);
        else if (cp == '\r') fputs("\\r", stdout);
        else if (cp == '\t') fputs("\\t", stdout);
        else if (cp == '\b') fputs("\\b", stdout);
        else if (cp == '\f') fputs("\\f", stdout);
        else if (cp >= 0x20 && cp < 0x7f) putchar((int)cp);
        else if (cp < 0x10000) printf("\\u%04x", cp);
        else printf("\\u%04x\\u%04x", 0xd800 + ((cp - 0x10000) >> 10), 0xdc00 + (cp & 0x3ff));
    }
    putchar('"');
}

static void put_side(const int64_t *px, const int64_t *sz, int64_t n, int64_t px_exp,
                     int64_t sz_exp) {
    putchar('[');
    for (int64_t i = 0; i < n; i++) {
        fputs(i ? ",[\"" : "[\"", stdout);
        put_decimal(px[i], px_exp);
        fputs("\",\"", stdout);
        put_decimal(sz[i], sz_exp);
        fputs("\"]", stdout);
    }
    putchar(']');
}

/* The line `obctl snapshot NAME --json` prints (its keys, order and separators). */
static void put_snapshot(const BookDesc *b, const Snapshot *snap) {
    int64_t price_exp = (int64_t)snap->head[C_PRICE_EXP], size_exp = (int64_t)snap->head[C_SIZE_EXP];
    uint64_t flags = snap->head[C_FLAGS];
    int stale = (flags & FLAG_STALE) || !(flags & FLAG_PUBLISHED);
    fputs("{\"book\":", stdout);
    put_json_string(b->name);
    fputs(",\"bids\":", stdout);
    put_side(snap->bid_px, snap->bid_sz, snap->n_bids, price_exp, size_exp);
    fputs(",\"asks\":", stdout);
    put_side(snap->ask_px, snap->ask_sz, snap->n_asks, price_exp, size_exp);
    printf(",\"update_id\":%" PRIu64 ",\"seq\":%" PRIu64 ",\"exch_ts_ns\":%" PRId64
           ",\"publish_ts_ns\":%" PRId64 ",\"stale\":%s,\"lagging\":%s}\n",
           snap->head[C_UPDATE_ID], snap->seq, (int64_t)snap->head[C_EXCH_TS_NS],
           (int64_t)snap->head[C_PUBLISH_TS_NS], stale ? "true" : "false",
           flags & FLAG_LAGGING ? "true" : "false");
    fflush(stdout);
}

typedef struct {
    uint32_t book_index;
    uint8_t kind, flags;
    int8_t price_exp, size_exp;
    uint64_t book_seq, update_id;
    int64_t exch_ts_ns, recv_ts_ns, publish_ts_ns, bid_px, bid_sz, ask_px, ask_sz;
} Record;

static void put_record(const BookDesc *b, const Record *r) {
    fputs("{\"book\":", stdout);
    put_json_string(b->name);
    printf(",\"kind\":%u,\"flags\":%u,\"price_exp\":%d,\"size_exp\":%d,\"book_seq\":%" PRIu64
           ",\"update_id\":%" PRIu64 ",\"exch_ts_ns\":%" PRId64 ",\"recv_ts_ns\":%" PRId64
           ",\"publish_ts_ns\":%" PRId64 ",\"bid_px\":%" PRId64 ",\"bid_sz\":%" PRId64
           ",\"ask_px\":%" PRId64 ",\"ask_sz\":%" PRId64 "}\n",
           r->kind, r->flags, r->price_exp, r->size_exp, r->book_seq, r->update_id,
           r->exch_ts_ns, r->recv_ts_ns, r->publish_ts_ns, r->bid_px, r->bid_sz, r->ask_px,
           r->ask_sz);
    fflush(stdout);
}

/* ------------------------------------------------------------------ the ring */

enum { TAKE_OK, TAKE_NOTHING, TAKE_LAPPED };

/* Record `pos`: its seq (acquire) must be pos + 1 before and after the copy of its body. */
static int take_record(const Segment *s, uint32_t shard, uint64_t pos, Record *r) {
    const char *rec = s->map + s->rings_offset + shard * s->ring_bytes
                      + (pos & (s->ring_records - 1)) * RING_RECORD_BYTES;
    uint64_t seq = load_acquire(rec + R_SEQ);
    if (seq != pos + 1) return seq < pos + 1 ? TAKE_NOTHING : TAKE_LAPPED;
    uint64_t w[RING_RECORD_BYTES / 8];
    copy_words(w, rec, RING_RECORD_BYTES / 8);
    atomic_thread_fence(memory_order_acquire);
    if (load_relaxed(rec + R_SEQ) != pos + 1) return TAKE_LAPPED;
    const char *body = (const char *)w;
    memcpy(&r->book_index, body + R_BOOK_INDEX, 4);
    r->kind = (uint8_t)body[R_KIND], r->flags = (uint8_t)body[R_FLAGS];
    r->price_exp = (int8_t)body[R_PRICE_EXP], r->size_exp = (int8_t)body[R_SIZE_EXP];
    r->book_seq = w[R_BOOK_SEQ / 8], r->update_id = w[R_UPDATE_ID / 8];
    r->exch_ts_ns = (int64_t)w[R_EXCH_TS_NS / 8], r->recv_ts_ns = (int64_t)w[R_RECV_TS_NS / 8];
    r->publish_ts_ns = (int64_t)w[R_PUBLISH_TS_NS / 8];
    r->bid_px = (int64_t)w[R_BID_PX / 8], r->bid_sz = (int64_t)w[R_BID_SZ / 8];
    r->ask_px = (int64_t)w[R_ASK_PX / 8], r->ask_sz = (int64_t)w[R_ASK_SZ / 8];
    return TAKE_OK;
}

/* After a lap: the book's best levels from its slot, as a KIND_RESYNC record. */
static Record resync_record(const Segment *s, uint32_t book, Snapshot *snap) {
    latch_read(s, book, 1, snap);
    Record r = {.book_index = book, .kind = KIND_RESYNC, .flags = (uint8_t)snap->head[C_FLAGS],
                .price_exp = (int8_t)snap->head[C_PRICE_EXP],
                .size_exp = (int8_t)snap->head[C_SIZE_EXP], .book_seq = snap->seq,
                .update_id = snap->head[C_UPDATE_ID],
                .exch_ts_ns = (int64_t)snap->head[C_EXCH_TS_NS],
                .recv_ts_ns = (int64_t)snap->head[C_RECV_TS_NS],
                .publish_ts_ns = (int64_t)snap->head[C_PUBLISH_TS_NS]};
    if (snap->n_bids) r.bid_px = snap->bid_px[0], r.bid_sz = snap->bid_sz[0];
    if (snap->n_asks) r.ask_px = snap->ask_px[0], r.ask_sz = snap->ask_sz[0];
    return r;
}

/* ------------------------------------------------------------------ waiting and liveness */

typedef struct {
    Control *control;
    Segment *seg;
    int epoll;
    double heartbeat_period_s;
    double stale_after_s;       /* --stale-after; the spec's default is STALE_AFTER_S */
} Session;

/* NULL while the observer lives; else why it is gone. */
static const char *check_liveness(Session *ss) {
    static char reason[700];
    const char *hung_up = service_socket(ss->control);
    if (hung_up) {
        snprintf(reason, sizeof reason, "%s%s%s", hung_up, *ss->control->last_error ? ": " : "",
                 ss->control->last_error);
        return reason;
    }
    if (header_u64(ss->seg->map, H_STATE) == STATE_CLOSED) return "observer shut down";
    double stale_after_s = ss->heartbeat_period_s * HEARTBEATS_MISSED_MAX;
    if (stale_after_s < ss->stale_after_s) stale_after_s = ss->stale_after_s;
    int64_t age_ns = clock_ns(CLOCK_REALTIME) - (int64_t)header_u64(ss->seg->map, H_HEARTBEAT_NS);
    if (age_ns > (int64_t)(stale_after_s * 1e9)) {
        snprintf(reason, sizeof reason, "heartbeat older than %g s", stale_after_s);
        return reason;
    }
    Control *c = ss->control;
    if (c->idle_s > 0
        && clock_ns(CLOCK_MONOTONIC) - c->last_sent_ns >= (int64_t)(c->idle_s * 0.5e9))
        send_ping(c);
    return NULL;
}

/* Sleep until a wake fd edge or the socket, at most LIVENESS_CHECK_MS; then the liveness check.
   A wake-up is only a hint: the caller rechecks the segment after this returns. */
static void wait_and_check(Session *ss) {
    struct epoll_event events[64];
    int n = epoll_wait(ss->epoll, events, 64, LIVENESS_CHECK_MS);
    if (n < 0 && errno != EINTR) die(EXIT_GONE, "epoll_wait: %s", strerror(errno));
    const char *gone = check_liveness(ss);
    if (gone) die(EXIT_GONE, "observer gone: %s", gone);
}

/* ------------------------------------------------------------------ commands */

/* A snapshot with room for depth_max levels a side; free(snap.bid_px) releases it. */
static Snapshot snapshot_buffer(const Segment *s) {
    Snapshot snap = {0};
    size_t d = s->depth_max;
    int64_t *levels = calloc(4 * d, sizeof *levels);
    if (!levels) die(EXIT_FAILED, "out of memory");
    snap.bid_px = levels, snap.bid_sz = levels + d, snap.ask_px = levels + 2 * d;
    snap.ask_sz = levels + 3 * d;
    return snap;
}

/* Read book b to `depth` levels, check it if it is live, print it as obctl does. */
static uint64_t print_book(const Segment *s, const BookDesc *b, int64_t depth, Snapshot *snap) {
    latch_read(s, b->index, depth > (int64_t)s->depth_max ? (int64_t)s->depth_max : depth, snap);
    uint64_t flags = snap->head[C_FLAGS];  /* a stale copy is not promised to be sane */
    int live = (flags & FLAG_PUBLISHED) && !(flags & FLAG_STALE);
    const char *broken = live ? check_book(snap) : NULL;
    if (broken) die(EXIT_INCOMPATIBLE, "%s at seq %" PRIu64 ": %s", b->name, snap->seq, broken);
    put_snapshot(b, snap);
    return snap->seq;
}

static void cmd_snapshot(Session *ss, const BookDesc *b, int64_t depth, long count) {
    Snapshot snap = snapshot_buffer(ss->seg);
    uint64_t last_seq = print_book(ss->seg, b, depth, &snap);
    for (long printed = 1; printed < count;) {
        wait_and_check(ss);
        latch_read(ss->seg, b->index, 0, &snap);    /* only its seq: new or not */
        if (snap.seq == last_seq) continue;
        last_seq = print_book(ss->seg, b, depth, &snap);
        printed++;
    }
    free(snap.bid_px);
}

/* Records of book b from the ring head on; count 0: until the observer goes. With
   `snapshot_depth`, first the book itself, read after the head (the spec's start order), and
   then only the records after that copy: a whole view with no change missed or repeated. */
static void cmd_follow(Session *ss, const BookDesc *b, long count, int64_t snapshot_depth) {
    const Segment *s = ss->seg;
    const char *head = s->map + s->shards_offset + (size_t)b->shard * SHARD_BYTES + S_HEAD;
    uint64_t pos = load_acquire(head), last_book_seq = 0;
    if (snapshot_depth > 0) {
        Snapshot book = snapshot_buffer(s);
        last_book_seq = print_book(s, b, snapshot_depth, &book);
        free(book.bid_px);
    }
    Snapshot snap = {0};
    int64_t best[4];
    snap.bid_px = best, snap.bid_sz = best + 1, snap.ask_px = best + 2, snap.ask_sz = best + 3;
    Record r;
    for (long printed = 0; count == 0 || printed < count;) {
        int taken = take_record(s, b->shard, pos, &r);
        if (taken == TAKE_NOTHING) {
            wait_and_check(ss);
            continue;
        }
        if (taken == TAKE_LAPPED) {          /* jump to the head, re-read the book's slot */
            pos = load_acquire(head);
            r = resync_record(s, b->index, &snap);
        } else {
            pos++;
            if (r.book_index != b->index) continue;
        }
        if (r.book_seq <= last_book_seq) continue;   /* a repeat after a resync */
        last_book_seq = r.book_seq;
        put_record(b, &r);
        printed++;
    }
}

static void cmd_layout(void) {
    printf("{\"magic\":%" PRIu64 ",\"layout_version\":%u,\"layout_hash\":%" PRIu64
           ",\"header_bytes\":%u,\"book_desc_bytes\":%u,\"book_stats_bytes\":%u"
           ",\"shard_bytes\":%u,\"copy_head_bytes\":%u,\"ring_record_bytes\":%u"
           ",\"align_bytes\":%u,\"slot_copies_offset\":%u,\"protocol_version\":%u"
           ",\"latch_retries_max\":%d,\"stale_after_s\":%g,\"heartbeats_missed_max\":%d"
           ",\"copy_bytes_d1\":%u,\"slot_bytes_d1\":%u,\"slot_bytes_d10\":%u"
           ",\"ring_bytes_r16\":%u}\n",
           (uint64_t)LAYOUT_MAGIC, LAYOUT_VERSION, (uint64_t)LAYOUT_HASH, HEADER_BYTES,
           BOOK_DESC_BYTES, BOOK_STATS_BYTES, SHARD_BYTES, COPY_HEAD_BYTES, RING_RECORD_BYTES,
           ALIGN_BYTES, SLOT_COPIES, PROTOCOL_VERSION, LATCH_RETRIES_MAX, STALE_AFTER_S,
           HEARTBEATS_MISSED_MAX, (unsigned)COPY_BYTES(1), (unsigned)SLOT_BYTES(1),
           (unsigned)SLOT_BYTES(10), (unsigned)RING_BYTES(16));
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
    die(EXIT_USAGE, "usage: obreader [--socket PATH] [--stale-after S] snapshot NAME "
                    "[--depth N] [--count K]\n"
                    "       obreader [--socket PATH] [--stale-after S] follow NAME [--count N] "
                    "[--with-snapshot [--depth N]]\n"
                    "       obreader layout");
}

static long number(const char *text, const char *what, long min) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || end == text || v < min || v > 1000000000)
        die(EXIT_USAGE, "%s must be an integer from %ld, got '%s'", what, min, text);
    return v;
}

int main(int argc, char **argv) {
    char path[4096] = "";
    const char *command = NULL, *name = NULL;
    long depth = DEPTH_DEFAULT, count = -1;
    int with_snapshot = 0;
    double stale_after_s = STALE_AFTER_S;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--socket") && i + 1 < argc) snprintf(path, sizeof path, "%s", argv[++i]);
        else if (!strcmp(a, "--depth") && i + 1 < argc) depth = number(argv[++i], "--depth", 1);
        else if (!strcmp(a, "--count") && i + 1 < argc) count = number(argv[++i], "--count", 0);
        else if (!strcmp(a, "--stale-after") && i + 1 < argc)
            stale_after_s = (double)number(argv[++i], "--stale-after", 1);
        else if (!strcmp(a, "--with-snapshot")) with_snapshot = 1;
        else if (a[0] == '-') usage();
        else if (!command) command = a;
        else if (!name) name = a;
        else usage();
    }
    if (command && !strcmp(command, "layout") && !name) { cmd_layout(); return EXIT_OK; }
    int is_snapshot = command && !strcmp(command, "snapshot");
    if (!name || !(is_snapshot || !strcmp(command, "follow"))) usage();
    if (!*path) default_socket_path(path, sizeof path);

    static Control control;
    control.sock = connect_socket(path);
    Welcome w = {0};
    int fds[FDS_MAX];
    int n_fds = handshake(&control, path, &w, fds);
    control.idle_s = w.idle_s;
    if (!w.fds_passed || (uint64_t)n_fds != 1 + w.n_eventfds)
        die(EXIT_INCOMPATIBLE, "observer passed %d fds, expected %" PRIu64, n_fds,
            1 + w.n_eventfds);
    Segment seg;
    map_segment(&seg, fds[0], &w);
    close(fds[0]);                  /* the mapping keeps the segment */

    Session ss = {&control, &seg, epoll_create1(EPOLL_CLOEXEC), w.heartbeat_period_s,
                  stale_after_s};
    for (int k = 1; k < n_fds; k++) {       /* never read: one edge per shard flush */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.u32 = (uint32_t)(k - 1)};
        if (epoll_ctl(ss.epoll, EPOLL_CTL_ADD, fds[k], &ev) < 0)
            die(EXIT_INCOMPATIBLE, "epoll_ctl wake fd: %s", strerror(errno));
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = SOCK_TAG};
    epoll_ctl(ss.epoll, EPOLL_CTL_ADD, control.sock, &ev);

    BookDesc b = resolve(&seg, name);
    if (is_snapshot) cmd_snapshot(&ss, &b, depth, count < 0 ? 1 : count);
    else cmd_follow(&ss, &b, count < 0 ? 0 : count, with_snapshot ? depth : 0);
    return EXIT_OK;
}
