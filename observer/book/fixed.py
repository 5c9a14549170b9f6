"""Exact decimal text <-> fixed-point integers (contract C3).

Exchanges send prices and sizes as decimal text ("0.35130000", "30316", Kraken v2's JSON
number literals). The book stores each value as a Python int `mantissa` meaning
`mantissa * 10**exp`, with one exponent per book side kind (price, size). Nothing here ever
touches a binary float, so two distinct price texts can never land on one level and a size is
never rounded.

The exponent is learned from the wire: a book starts at exp 0 and every text with more
fraction digits than seen so far makes the exponent finer (the book rescales what it holds,
exactly, by a power of ten). Trailing zeros count as precision on purpose: Kraken's checksum
is computed over the text with the instrument's full precision ("0.00100000" -> "100000"), so
the exponent must remember them.

The fast path is one `find`, one slice-join and one `int()`; anything unusual (exponent
notation such as "1e-05") goes through `decimal.Decimal`, still exact. Text that is not a
plain non-negative decimal raises ValueError: `int()` alone would accept "1_000", " 12" or
"+5", so the digits are checked first.
"""

import re
from decimal import Decimal, InvalidOperation
from itertools import repeat

# int64 is what the segment stores (proto layout); a mantissa past it cannot be exported.
MANTISSA_MAX = 2**63 - 1
# The finest exponent accepted: 10**-18 covers every exchange's tick and lot (ETH wei).
DECIMALS_MAX = 18
# Integer digits an exponent-notation text may reach: MANTISSA_MAX has 19, so a value with
# more is refused before `10**exponent` is computed ("1e10000000" would take minutes).
WHOLE_DIGITS_MAX = len(str(MANTISSA_MAX))

_SLOW_CHARS = frozenset("0123456789.eE+-")

POW10 = tuple(10**k for k in range(2 * DECIMALS_MAX + 1))


def parse_decimal(text):
    """Return (mantissa, decimals) with value == mantissa / 10**decimals, exactly.

    Raises ValueError for anything that is not a finite non-negative decimal.
    """
    dot = text.find(".")
    if dot < 0:
        digits = text
        decimals = 0
    else:
        digits = text[:dot] + text[dot + 1 :]
        decimals = len(text) - dot - 1
    if digits.isascii() and digits.isdigit() and decimals <= DECIMALS_MAX:
        return int(digits), decimals
    return parse_decimal_slow(text)


# One snapshot column (all prices, or all sizes) joined by NULs: plain decimals only.
_PLAIN = r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_COLUMN = re.compile(f"{_PLAIN}(?:\x00{_PLAIN})*")


def parse_column(texts):
    """All texts of one field of a snapshot -> (mantissas, decimals), two lists, exact.

    Discussion: a Coinbase snapshot carries tens of thousands of levels, and parsing them one
    call at a time blocks the shard's loop for a third of a second. Here one regex validates
    the whole column, and `map` runs `str.find`, `len`, `str.replace` and `int` in C; only
    the decimals arithmetic is a Python comprehension. Anything unusual (exponent notation,
    junk, non-strings) takes the per-text path, which also gives the exact error.
    """
    texts = list(texts)
    try:
        joined = "\x00".join(texts)
    except TypeError:
        joined = None
    if joined is None or not _COLUMN.fullmatch(joined):
        pairs = [parse_decimal(text) for text in texts]
        return [m for m, _ in pairs], [d for _, d in pairs]
    dots = map(str.find, texts, repeat("."))
    decimals = [length - dot - 1 if dot >= 0 else 0 for length, dot in zip(map(len, texts), dots)]
    mantissas = list(map(int, map(str.replace, texts, repeat("."), repeat(""))))
    if decimals and max(decimals) > DECIMALS_MAX:
        raise ValueError(f"more than {DECIMALS_MAX} fraction digits in a snapshot column")
    return mantissas, decimals


def scale_column(mantissas, decimals, target_decimals):
    """Mantissas at `target_decimals` (>= every decimals entry), exactly."""
    if not decimals or min(decimals) == target_decimals:
        return mantissas
    return [m * POW10[target_decimals - d] for m, d in zip(mantissas, decimals)]


def parse_decimal_slow(text):
    """The rare forms: exponent notation, or reject. Kept out of the hot path."""
    if not isinstance(text, str) or len(text) > 64 or not set(text) <= _SLOW_CHARS or text[:1] in "+-":
        raise ValueError(f"not a decimal: {text!r}"[:100])
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a decimal: {text!r}") from None
    if not value.is_finite() or value.is_signed():
        raise ValueError(f"not a finite non-negative decimal: {text!r}")
    sign, digit_tuple, exponent = value.as_tuple()
    assert sign == 0
    mantissa = int("".join(map(str, digit_tuple)))
    if exponent >= 0:
        if mantissa and len(digit_tuple) + exponent > WHOLE_DIGITS_MAX:
            raise ValueError(f"more than {WHOLE_DIGITS_MAX} integer digits: {text!r}")
        return mantissa * 10**exponent if mantissa else 0, 0
    decimals = -exponent
    if decimals > DECIMALS_MAX:
        raise ValueError(f"more than {DECIMALS_MAX} fraction digits: {text!r}")
    return mantissa, decimals


def render_minimal(mantissa, exp):
    """Shortest decimal text of mantissa * 10**exp ("30316", "5.16"): OKX's string form."""
    assert exp <= 0
    assert mantissa >= 0
    if exp == 0:
        return str(mantissa)
    digits = str(mantissa).rjust(1 - exp, "0")
    whole = digits[:exp]
    frac = digits[exp:].rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def render_fixed(mantissa, exp):
    """Decimal text with exactly -exp fraction digits ("0.00100000"): full precision."""
    assert exp <= 0
    assert mantissa >= 0
    if exp == 0:
        return str(mantissa)
    digits = str(mantissa).rjust(1 - exp, "0")
    return f"{digits[:exp]}.{digits[exp:]}"
