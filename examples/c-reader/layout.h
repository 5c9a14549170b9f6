/* The observer segment layout and protocol constants, copied from docs/PROTOCOL.md (the spec).
 * A reader hard-codes the (layout_version, layout_hash) pair it implements and refuses any
 * other. tests/client/test_c_reader.py compares these values (`obreader layout`) with the
 * implementation's, and tests/shm/test_protocol_doc_facts.py the spec's with the same. */
#ifndef OBREADER_LAYOUT_H
#define OBREADER_LAYOUT_H

#define LAYOUT_MAGIC 0x314d48535642534fULL   /* "OBSVSHM1" little-endian */
#define LAYOUT_VERSION 3u
#define LAYOUT_HASH 0x34cd096eccb0b361ULL
#define PROTOCOL_VERSION 2u
#define MSG_REPLY_BYTES_MAX 1048576u

/* Sizes and the formulas a reader recomputes (PROTOCOL.md, "Sizes a reader checks"). */
#define ALIGN_BYTES 64u
#define ALIGN_UP(n) (((n) + ALIGN_BYTES - 1) / ALIGN_BYTES * ALIGN_BYTES)
#define HEADER_BYTES 256u
#define BOOK_DESC_BYTES 128u
#define BOOK_STATS_BYTES 128u
#define SHARD_BYTES 128u
#define COPY_HEAD_BYTES 128u
#define RING_RECORD_BYTES 96u
#define COPY_BYTES(d) (COPY_HEAD_BYTES + 32u * (d))
#define SLOT_BYTES(d) ALIGN_UP(64u + 2u * COPY_BYTES(d))
#define RING_BYTES(r) ALIGN_UP((r) * RING_RECORD_BYTES)

/* Limits of the four numbers the geometry is computed from. */
#define BOOKS_MAX 65536u
#define SHARDS_MAX 256u
#define DEPTH_MAX_LIMIT 4096u
#define RING_RECORDS_MIN 16u
#define RING_RECORDS_MAX (1u << 24)

/* Header field offsets. */
#define H_MAGIC 0
#define H_LAYOUT_VERSION 8
#define H_HEADER_BYTES 12
#define H_LAYOUT_HASH 16
#define H_GENERATION 24
#define H_HEARTBEAT_NS 40
#define H_STATE 64
#define H_BOOKS_N 72
#define H_SHARDS_N 76
#define H_DEPTH_MAX 80
#define H_RING_RECORDS 84
#define H_DESCS_OFFSET 88
#define H_STATS_OFFSET 96
#define H_SHARDS_OFFSET 104
#define H_SLOTS_OFFSET 112
#define H_SLOT_BYTES 120
#define H_RINGS_OFFSET 128
#define H_RING_BYTES 136
#define H_SEGMENT_BYTES 144
#define STATE_CLOSED 2u

/* Book descriptor. */
#define D_EXCHANGE 0
#define D_EXCHANGE_BYTES 16
#define D_SYMBOL 16
#define D_SYMBOL_BYTES 48
#define D_SHARD_INDEX 120

/* Shard header. */
#define S_HEAD 0

/* Book slot: the latch sequence word, then copies 0 and 1 of COPY_BYTES(depth_max) each. */
#define SLOT_SEQ 0
#define SLOT_COPIES 64u
/* Copy head, as word indexes (every field is 8 bytes). */
#define COPY_HEAD_WORDS 10
#define C_BOOK_SEQ 0
#define C_N_BIDS 1
#define C_N_ASKS 2
#define C_PRICE_EXP 3
#define C_SIZE_EXP 4
#define C_FLAGS 5
#define C_UPDATE_ID 6
#define C_EXCH_TS_NS 7
#define C_RECV_TS_NS 8
#define C_PUBLISH_TS_NS 9
#define FLAG_STALE 1u
#define FLAG_LAGGING 2u
#define FLAG_PUBLISHED 4u

/* Ring record. */
#define R_SEQ 0
#define R_BOOK_INDEX 8
#define R_KIND 12
#define R_FLAGS 13
#define R_PRICE_EXP 14
#define R_SIZE_EXP 15
#define R_BOOK_SEQ 16
#define R_UPDATE_ID 24
#define R_EXCH_TS_NS 32
#define R_RECV_TS_NS 40
#define R_PUBLISH_TS_NS 48
#define R_BID_PX 56
#define R_BID_SZ 64
#define R_ASK_PX 72
#define R_ASK_SZ 80
#define KIND_RESYNC 3u

/* Reader rules. */
#define LATCH_RETRIES_MAX 10000
#define STALE_AFTER_S 1.0           /* heartbeat age past which the observer is gone... */
#define HEARTBEATS_MISSED_MAX 5     /* ...and never fewer than this many periods */

#endif
