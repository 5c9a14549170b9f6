"""The kinds of value a configuration key can hold, and how each one is checked.

Why a module of its own: observer/config/settings.py declares every key once, in a table (name, kind,
default, meaning, flag), and both surfaces read that table: a TOML file gives typed values
(`check`), the command line gives text (`parse`, then `check`). So a key is checked the same
way wherever it comes from, and the error says the same thing: what the value must be and what
it was (`must be a finite number from 0.001 to 1000000, got nan`). The caller adds where (file,
line, table, key or flag); a kind never knows.

What a kind refuses on purpose: booleans where numbers are expected (in Python `True == 1`, in
TOML `true` is not a number), NaN and infinities, numbers outside a stated range (a range is
what keeps `1e-300` from becoming an overflow far from the file), empty strings, control
characters (they would reach logs, URLs and shared-memory names), duplicates in lists.

A problem is one line: user text is shown with `repr`, which escapes control characters, and
clipped, so a 10 kB value cannot flood the terminal either.
"""

from __future__ import annotations

import abc
import math
import os
import re
import ssl
import stat
from typing import Any
from urllib.parse import urlsplit

SHOWN_CHARS_MAX = 160           # of a bad value echoed back in an error
UNIX_PATH_BYTES_MAX = 107       # sun_path is 108 bytes with its terminating NUL
CA_FILE_BYTES_MAX = 4 << 20     # observer/net/tls.py digests the file per connect: keep it small
ID_MAX = 2**32 - 2              # uid_t/gid_t; 2**32 - 1 is (uid_t)-1, "no id", never a real one
IDS_MAX = 1024                  # entries in allow_uids / allow_gids
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,30}")      # ASCII digits only: int() takes any script's
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Problem(ValueError):
    """What is wrong with one value; the caller says where it came from."""


def shown(value: Any) -> str:
    """A value as the user wrote it, escaped and clipped for a one-line error."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS_MAX:
        return text
    half = SHOWN_CHARS_MAX // 2        # keep both ends: a path's file name is at its end
    return f"{text[:half]}...{text[-half:]}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Kind(abc.ABC):
    """Base: `check` a typed value (TOML), `parse` text (a flag) into one and check it."""

    expected = "a value"

    @abc.abstractmethod
    def check(self, value: Any) -> Any:
        """The value as the config holds it, or a Problem raised saying what was expected."""

    def parse(self, text: str) -> Any:
        return self.check(text)

    def refuse(self, value: Any, why: str | None = None) -> Problem:
        return Problem(f"must be {self.expected}, got {shown(value)}" + (f" ({why})" if why else ""))


class Integer(Kind):
    def __init__(self, lo: int, hi: int):
        assert lo <= hi
        self.lo, self.hi = lo, hi
        self.expected = f"an integer from {lo} to {hi}"

    def check(self, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.refuse(value)
        if not self.lo <= value <= self.hi:
            raise self.refuse(value)
        return value

    def parse(self, text: str) -> int:
        if not _INTEGER_TEXT.fullmatch(text.strip()):
            raise self.refuse(text)
        return self.check(int(text))


class Number(Kind):
    """A finite int or float in [lo, hi]; ints are taken as floats."""

    def __init__(self, lo: float, hi: float):
        assert lo > 0
        assert lo <= hi
        self.lo, self.hi = lo, hi
        self.expected = f"a finite number from {_number_text(lo)} to {_number_text(hi)}"

    def check(self, value: Any) -> float:
        if not _is_number(value):
            raise self.refuse(value)
        # Compared before any float(): a TOML integer of 400 digits is a number Python holds
        # but a float cannot (OverflowError), and NaN compares false, so it is refused here.
        if not self.lo <= value <= self.hi:
            raise self.refuse(value)
        return float(value)

    def parse(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise self.refuse(text) from None
        if not math.isfinite(value) or not self.lo <= value <= self.hi:
            raise self.refuse(text)
        return value


class Flag(Kind):
    expected = "true or false"

    def check(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.refuse(value)
        return value


class Choice(Kind):
    def __init__(self, options: tuple[str, ...], *, fold_case: bool = False):
        self.options = options
        self.fold_case = fold_case
        self.expected = f"one of {', '.join(options)}"

    def check(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.refuse(value)
        key = value.strip().lower() if self.fold_case else value
        if key not in self.options:
            raise self.refuse(value)
        return key


class Name(Kind):
    """An instance name: it becomes part of a lock name, a segment name and log lines."""

    def __init__(self, bytes_max: int):
        self.pattern = re.compile(f"[A-Za-z0-9_-]{{1,{bytes_max}}}")
        self.expected = f"1 to {bytes_max} ASCII letters, digits, '-' or '_'"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not self.pattern.fullmatch(value):
            raise self.refuse(value)
        return value


class SocketPath(Kind):
    """A unix socket path: not empty, no NUL, at most UNIX_PATH_BYTES_MAX bytes."""

    expected = "a unix socket path"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.refuse(value)
        size = len(os.fsencode(value))
        if size > UNIX_PATH_BYTES_MAX:
            raise Problem(f"{shown(value)} is {size} bytes; a unix socket path holds at most "
                          f"{UNIX_PATH_BYTES_MAX}")
        return value


class IdList(Kind):
    """allow_uids / allow_gids: numbers, not names (a name would need a lookup at every start
    and could silently mean another id on another host)."""

    def __init__(self, what: str):
        self.what = what
        self.expected = f"a list of {what} numbers from 0 to {ID_MAX}"

    def check(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)):
            raise self.refuse(value)
        if len(value) > IDS_MAX:
            raise Problem(f"lists {len(value)} {self.what}s, more than {self.what}s_max={IDS_MAX}")
        for item in value:
            if isinstance(item, str):
                raise self.refuse(item, f"give the number, e.g. from `id -{self.what[0]} NAME`")
            if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= ID_MAX:
                raise self.refuse(item)
        _refuse_duplicates(value, self.what)
        return tuple(value)


class CoreList(Kind):
    """Core numbers; whether they exist here is checked later, for the cores in effect (a
    `--cores` flag replaces the file's list)."""

    def __init__(self, entries_max: int):
        self.entries_max = entries_max
        self.expected = "a non-empty list of core numbers (integers from 0)"

    def check(self, value: Any) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise self.refuse(value)
        if len(value) > self.entries_max:
            raise Problem(f"lists {len(value)} cores, more than shards_max={self.entries_max}")
        for item in value:
            if not isinstance(item, int) or isinstance(item, bool) or item < 0:
                raise self.refuse(item)
        _refuse_duplicates(value, "core")
        return tuple(value)


class SymbolList(Kind):
    def __init__(self, entries_max: int):
        self.entries_max = entries_max
        self.expected = "a non-empty list of symbols (strings without spaces)"

    def check(self, value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise self.refuse(value)
        if len(value) > self.entries_max:
            raise Problem(f"lists {len(value)} symbols, more than symbols_per_feed_max="
                          f"{self.entries_max}")
        for item in value:
            if not isinstance(item, str) or not item.strip() or _has_space(item.strip()):
                raise self.refuse(item)
        return tuple(item.strip() for item in value)


class Url(Kind):
    """A base URL: scheme, host, optional port and path; no query, fragment or credentials
    (the adapters append their own paths and queries)."""

    def __init__(self, schemes: tuple[str, ...]):
        self.schemes = schemes
        self.expected = " or ".join(f"{s}://HOST[:PORT][/PATH]" for s in schemes)

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or _has_space(value):
            raise self.refuse(value)
        parts = urlsplit(value)
        if parts.scheme not in self.schemes or not parts.hostname:
            raise self.refuse(value)
        if parts.query or parts.fragment or parts.username is not None:
            raise self.refuse(value, "no query, fragment or user name")
        try:
            port = parts.port                   # ValueError: not a number, or past 65535
        except ValueError:
            port = 0
        if port == 0:                           # None (no port) takes the scheme's default
            raise self.refuse(value, "the port must be 1 to 65535")
        return value


class CaFile(Kind):
    """An extra CA bundle to trust. Loaded here once, so a file that is not a PEM certificate
    is refused at start-up instead of failing every connection later."""

    expected = "a readable PEM CA file"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.refuse(value)
        try:
            st = os.stat(value)
        except OSError as exc:
            raise Problem(f"{shown(value)}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Problem(f"{shown(value)} is not a regular file")
        if st.st_size > CA_FILE_BYTES_MAX:
            raise Problem(f"{shown(value)} is {st.st_size} bytes, more than "
                          f"ca_file_bytes_max={CA_FILE_BYTES_MAX}")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)      # no system store: cheap
        try:
            context.load_verify_locations(cafile=value)
        except ssl.SSLError as exc:                    # an OSError too: catch it first
            raise Problem(f"{shown(value)} holds no usable PEM certificate ({exc.reason})") from None
        except OSError as exc:
            raise Problem(f"{shown(value)}: {exc.strerror or exc}") from None
        return value


class UrlList(Kind):
    """One URL or a list of them (a cluster's servers), each checked by `Url`."""

    def __init__(self, schemes: tuple[str, ...], entries_max: int):
        self.url = Url(schemes)
        self.entries_max = entries_max
        self.expected = f"a URL or a non-empty list of URLs ({self.url.expected})"

    def check(self, value: Any) -> tuple[str, ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise self.refuse(value)
        if len(items) > self.entries_max:
            raise Problem(f"lists {len(items)} URLs, more than {self.entries_max}")
        return tuple(self.url.check(item) for item in items)

    def parse(self, text: str) -> tuple[str, ...]:
        return self.check([part.strip() for part in text.split(",")])


class ReadableFile(Kind):
    """A file read at start-up (credentials, a certificate or its key): it must exist, be a
    regular file and be readable by us, so a typo is refused before anything starts."""

    def __init__(self, what: str, bytes_max: int = 1 << 20):
        self.what = what
        self.bytes_max = bytes_max
        self.expected = f"a readable {what} file"

    def check(self, value: Any) -> str:
        if not isinstance(value, str) or not value or "\0" in value:
            raise self.refuse(value)
        try:
            st = os.stat(value)
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise Problem(f"{shown(value)}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Problem(f"{shown(value)} is not a regular file")
        if st.st_size > self.bytes_max:
            raise Problem(f"{shown(value)} is {st.st_size} bytes, more than {self.bytes_max}")
        return value


def _number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _has_space(text: str) -> bool:
    return bool(_CONTROL.search(text)) or any(c.isspace() for c in text)


def _refuse_duplicates(values, what: str) -> None:
    seen = set()
    for item in values:
        if item in seen:
            raise Problem(f"lists {what} {item} twice")
        seen.add(item)
