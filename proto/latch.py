"""The ordering-sensitive code: how sequence words are stored and loaded (C4, C5).

Why one module. Everything else in the segment is plain data; correctness of concurrent reads
rests on the order of a handful of stores and loads, and that order lives here and nowhere
else, so it can be read, reviewed and tested in one sitting.

Memory model relied on: x86-64 (TSO). Stores become visible to other cores in program order,
and loads are not reordered with other loads. Python offers no fences, so this module is only
correct on such a machine; `_check_platform` refuses the others. The interpreter does not
cache or reorder loads across separate Python operations: each `words[i]` is a real load.

Every sequence word is an aligned u64 stored by its own `words[i] = v` on a memoryview cast to
"Q": CPython packs that with an 8-byte `memcpy`, one `mov` on x86-64, atomic when aligned. No
sequence word is ever written by the bulk copy (numpy or `struct.pack_into`) that writes data.

The book latch. A slot has one sequence word `seq` and two copies; readers use copy `seq & 1`.
A publish writes the whole visible state of the book (the top levels and the scalars), so the
writer needs only the first half of the kernel's `seqcount_latch`: it fills the idle copy
`(seq + 1) & 1`, which no reader that loaded `seq` is using, then stores `seq + 1`, flipping
readers to it. The next publish fills the other copy. A reader loads `seq`, copies `seq & 1`,
and keeps the copy only if `seq` is unchanged; otherwise a publish began into the copy it was
reading and it retries. It never waits on a writer mid-write (unlike a plain seqlock, where an
odd sequence sends every reader spinning), never blocks the writer, and only loads.

The ring. Record `pos` lives at `pos % ring_records`; its `seq` word is 0 while being written
and `pos + 1` once complete; the shard's `head` (records ever appended) is stored after the
record. A reader at `pos < head` copies the record between two loads of its `seq`: anything
other than `pos + 1` means the writer has lapped the reader (C5).
"""

from __future__ import annotations

import platform

LATCH_RETRIES_MAX = 10_000  # a reader gives up (and says why) after this many retries


class LatchContended(Exception):
    """A reader could not get a stable copy in LATCH_RETRIES_MAX tries."""


def _check_platform() -> None:
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise RuntimeError(f"observer's lock-free segment protocol relies on x86-64 store "
                           f"ordering; this machine is {machine}")


_check_platform()


def latch_write(words, seq_index: int, seq: int, write_copy, book_index: int) -> int:
    """Publish into the idle copy, then flip readers to it. Returns the new sequence.

    `write_copy(copy_index, book_index)` performs the bulk stores of one copy; `seq` is the
    writer's own record of the slot's sequence (the writer never reads it back from memory).
    """
    seq_next = seq + 1
    write_copy(seq_next & 1, book_index)  # data stores into the copy no current reader uses
    words[seq_index] = seq_next  # one aligned 8-byte store, after the data (TSO keeps order)
    return seq_next


def latch_read(words, seq_index: int, read_copy, arg):
    """Return `(seq, read_copy(seq & 1, arg))` from a copy that no publish touched meanwhile."""
    for _ in range(LATCH_RETRIES_MAX):
        seq = words[seq_index]
        value = read_copy(seq & 1, arg)
        if words[seq_index] == seq:
            return seq, value
    raise LatchContended(f"no stable copy after {LATCH_RETRIES_MAX} tries (LATCH_RETRIES_MAX): "
                         f"the writer publishes faster than this reader can copy")


def ring_append(words, record_seq_index: int, head_index: int, pos: int, write_body,
                *body) -> int:
    """Append record `pos` (its body via `write_body(*body)`); returns the new head."""
    words[record_seq_index] = 0  # in progress: a reader mid-copy will see the change
    write_body(*body)
    words[record_seq_index] = pos + 1  # complete, after its body
    words[head_index] = pos + 1  # visible to readers polling the head, after the record
    return pos + 1


def ring_head(words, head_index: int) -> int:
    return words[head_index]


def ring_read(words, record_seq_index: int, pos: int, read_body, arg):
    """Return `read_body(arg)` for record `pos`, or None if the writer overwrote it (a lap).

    The caller has already seen `head > pos`, so the record was complete once.
    """
    if words[record_seq_index] != pos + 1:
        return None
    body = read_body(arg)
    if words[record_seq_index] != pos + 1:
        return None
    return body


def store_word(words, index: int, value: int) -> None:
    """A counter or timestamp: one aligned 8-byte store, readers see old or new, never torn."""
    words[index] = value
