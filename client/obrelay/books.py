"""The followed books: per-book relay state and the coalescing queue (latest wins).

Why no message queue. The observer's slot always holds a book's latest state, so the relay
never needs to keep a message: a book that changed is marked *dirty*, once, in a FIFO of book
entries, and when NATS can take a message the relay reads the slot then. A book that changes
again while dirty costs nothing more: the later state wins when it is read. The FIFO holds each
followed book at most once, so it is bounded by the number of books whatever the update rate or
however long NATS stalls; nothing else grows.

What was coalesced is counted exactly from the observer's own per-book publish counter
(`book_seq`, +1 per publish, C4/C5): a message for `book_seq` S after one for S' in the same
observer generation stands for S - S' publishes, so S - S' - 1 of them were folded into it.

Entries are keyed by book name: a book keeps its relay sequence across observer restarts (a new
generation may number books differently), and `relay_seq` is contiguous for the relay's life.
"""

from __future__ import annotations

import collections

from obproto import layout


class FollowedBook:
    __slots__ = ("name", "subject", "index", "dirty", "relay_seq", "generation", "book_seq",
                 "last")

    def __init__(self, name: str, subject: str):
        self.name = name
        self.subject = subject
        self.index = -1          # its book index in the attached generation, -1 if none
        self.dirty = False
        self.relay_seq = 0       # of the last message published (0: none yet)
        self.generation = 0      # observer generation of the last message published
        self.book_seq = 0        # observer book_seq of the last message published
        self.last = None         # the last snapshot published (re-sent stale if the observer goes)


class BookTable:
    """Followed books by name and by the attached generation's book index, and the dirty FIFO."""

    def __init__(self, subject_of, follows):
        self._subject_of = subject_of      # book name -> NATS subject
        self._follows = follows            # book name -> bool (the --books globs)
        self.by_name: dict[str, FollowedBook] = {}
        self._by_index: list[FollowedBook | None] = []
        self._dirty: collections.deque[FollowedBook] = collections.deque()
        self.generation = 0
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self.by_name)

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    def attach(self, generation: int, infos) -> list[FollowedBook]:
        """A new observer generation: map its book indexes; every followed book is dirty.
        Returns the followed books of this generation."""
        self.generation = generation
        self._by_index = [None] * len(infos)
        for book in self.by_name.values():
            book.index = -1
        followed = []
        for info in infos:
            if not self._follows(info.name):
                continue
            book = self.by_name.get(info.name)
            if book is None:
                book = self.by_name[info.name] = FollowedBook(info.name,
                                                              self._subject_of(info.name))
            book.index = info.book_index
            self._by_index[info.book_index] = book
            followed.append(book)
            self.mark(book)
        return followed

    def note(self, update) -> None:
        """One ring record (obclient Update). An update the last message already carried
        (its book_seq is not above) changes nothing; any other record marks the book dirty."""
        if not 0 <= update.book_index < len(self._by_index):
            return
        book = self._by_index[update.book_index]
        if book is None:
            return
        if (update.kind == layout.KIND_UPDATE and book.generation == self.generation
                and update.book_seq <= book.book_seq):
            return
        self.mark(book)

    def mark(self, book: FollowedBook) -> None:
        if not book.dirty:
            book.dirty = True
            self._dirty.append(book)
            assert len(self._dirty) <= len(self.by_name)

    def mark_all(self) -> None:
        """Every book with something to say (re-sent after a NATS reconnect)."""
        for book in self.by_name.values():
            if book.index >= 0 or book.last is not None:
                self.mark(book)

    def pop(self) -> FollowedBook | None:
        if not self._dirty:
            return None
        book = self._dirty.popleft()
        book.dirty = False
        return book

    def published(self, book: FollowedBook, generation: int, snap) -> None:
        """Record a message: count the observer publishes it folded in (same generation)."""
        if generation == book.generation and book.book_seq and snap.seq > book.book_seq + 1:
            self.coalesced += snap.seq - book.book_seq - 1
        book.relay_seq += 1
        book.generation = generation
        book.book_seq = snap.seq
        book.last = snap

    def relay_seqs(self) -> dict[str, int]:
        """name -> relay_seq of every book published in this incarnation (for heartbeats)."""
        return {b.name: b.relay_seq for b in self.by_name.values() if b.relay_seq}
