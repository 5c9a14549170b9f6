"""The ordering-sensitive code: how sequence words are stored and loaded (C4, C5).

Why one module. Everything else in the segment is plain data; correctness of concurrent reads
rests on the order of a handful of stores and loads, and that order lives here and nowhere
else, so it can be read, reviewed and tested in one sitting.

Memory model relied on: x86-64 (TSO). Stores become visible to other cores in program order,
and loads are not reordered with other loads. Python offers no fences, so this module is only
correct on such a machine; `require_tso` (called whenever a segment is mapped) refuses others.
The interpreter does not cache or reorder loads across separate Python operations: each
`words[i]` is a real load.

Every sequence word is an aligned u64 stored by its own `words[i] = v` on a memoryview cast to
"Q": CPython packs that with an 8-byte `memcpy`, one `mov` on x86-64, atomic when aligned. No
sequence word is ever written by the bulk copy (numpy or `struct.pack_into`) that writes data.
`struct.pack_into` zero-fills its whole range before writing the fields, so it may only write
bytes no reader trusts yet (an idle copy, a record whose seq word is 0); counters and
timestamps that readers take as they are get single word stores (`store_word`).

The book latch. A slot has one sequence word `seq` and two copies; readers use copy
`seq & 1`. A publish writes the whole visible state of the book (the top levels and the
scalars), so the writer needs only the first half of the kernel's `seqcount_latch`: it fills
the idle copy `(seq + 1) & 1`, which no reader that loaded `seq` is using, then stores
`seq + 1`, flipping readers to it. The next publish fills the other copy. A reader loads `seq`,
copies `seq & 1`, and keeps the copy only if `seq` is unchanged; otherwise the writer flipped
at least once meanwhile, and the publish after a flip rewrites the copy it was reading, so it
retries. It never waits on a writer mid-write (unlike a plain seqlock, where an odd sequence
sends every reader spinning), never blocks the writer, and only loads.

The ring. Record `pos` lives at `pos % ring_records`; its `seq` word is 0 while being written
and `pos + 1` once complete; the shard's `head` (records ever appended) is stored after the
record. A reader at `pos < head` copies the record between two loads of its `seq`: anything
other than `pos + 1` means the writer has lapped the reader (C5).

Wake-ups. The shard's eventfd write (ShardWriter.flush) comes after a batch's stores and is a
system call, so every store before it is visible to a reader the write wakes. Readers treat the
wake-up as a hint and always recheck the words here.
"""

from __future__ import annotations

import platform

from proto.layout import RECORD_BODY_OFFSET, RING_RECORD

RECORD_WORDS = RING_RECORD.itemsize // 8

LATCH_RETRIES_MAX = 10_000  # a reader gives up (and says why) after this many retries


class LatchContended(Exception):
    """A reader could not get a stable copy in LATCH_RETRIES_MAX tries."""


def require_tso() -> None:
    """Refuse to map a segment on a machine whose memory model this protocol does not fit.

    Called when a segment is mapped (not at import), so tools that only talk to the control
    socket still run anywhere.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise RuntimeError(f"observer's lock-free segment protocol relies on x86-64 store "
                           f"ordering; this machine is {machine}")


def publish_commit(words, buf, seq_index: int, seq_next: int, copy_head, copy_head_offset: int,
                   copy_head_fields: tuple, record_seq_index: int, record_body,
                   record_fields: tuple, head_index: int, pos: int) -> None:
    """Make a filled copy visible and describe it in ring record `pos`, in the one safe order.

    Before the call the writer has bulk-written the levels of the idle copy `seq_next & 1`
    (which no reader of the current sequence uses). Then, in program order:
      1. the copy head (counts, exponents, ids, flags): still data of the idle copy;
      2. the slot sequence `seq_next`: one 8-byte store, flips readers to the new copy;
      3. the record's seq word 0: a reader mid-copy of the old record at this index sees it;
      4. the record body;
      5. the record's seq word `pos + 1`: complete;
      6. the shard head `pos + 1`: readers polling the head find the record whole.
    TSO makes other cores see these stores in this order.
    """
    copy_head.pack_into(buf, copy_head_offset, *copy_head_fields)
    words[seq_index] = seq_next
    words[record_seq_index] = 0
    record_body.pack_into(buf, record_seq_index * 8 + RECORD_BODY_OFFSET, *record_fields)
    words[record_seq_index] = pos + 1
    words[head_index] = pos + 1


def latch_read(words, seq_index: int, read_copy, arg):
    """Return `(seq, read_copy(seq & 1, arg))` from a copy that no publish touched meanwhile."""
    for _ in range(LATCH_RETRIES_MAX):
        seq = words[seq_index]
        value = read_copy(seq & 1, arg)
        if words[seq_index] == seq:
            return seq, value
    raise LatchContended(f"no stable copy after {LATCH_RETRIES_MAX} tries (LATCH_RETRIES_MAX): "
                         f"the writer publishes faster than this reader can copy")


def ring_head(words, head_index: int) -> int:
    return words[head_index]


def ring_read(words, buf, ring_word0: int, mask: int, pos: int, head: int, body, out: list,
              make, records_max: int) -> tuple[int, bool]:
    """Copy records `pos`.. up to `head` (at most `records_max`) into `out`, in order.

    The caller loaded `head` first, so every record before it was complete once. Each record is
    copied between two loads of its seq word; anything but `pos + 1` means the writer has
    overwritten it (or is overwriting it): the reader was lapped. Returns `(pos, lapped)`.
    """
    end = min(head, pos + records_max)
    while pos < end:
        index = ring_word0 + (pos & mask) * RECORD_WORDS
        if words[index] != pos + 1:
            return pos, True
        fields = body.unpack_from(buf, index * 8 + RECORD_BODY_OFFSET)
        if words[index] != pos + 1:
            return pos, True
        out.append(make(fields))
        pos += 1
    return pos, False


def store_word(words, index: int, value: int) -> None:
    """A counter or timestamp: one aligned 8-byte store, readers see old or new, never torn."""
    words[index] = value
