"""The relay's wire contract (client/obproto/relay.py) on its own: subject tokens, messages, the
receiver's ordering rule. No processes."""

import random

import msgpack
import numpy as np
import pytest

from obproto import relay as wire


class Snap:      # the fields of an obclient BookSnapshot that encode_book reads
    seq, update_id, exch_ts_ns, recv_ts_ns, publish_ts_ns = 8, 1234, 1, 2, 3
    price_exp, size_exp = -2, -8
    bid_px = np.array([5_000_000, 4_999_999], dtype=np.int64)
    bid_sz = np.array([10**12, 1], dtype=np.int64)     # beyond float precision as a product
    ask_px = np.array([5_000_001], dtype=np.int64)
    ask_sz = np.array([7], dtype=np.int64)


def book(name="binance:BTCUSDT", incarnation=5, relay_seq=1, **changes):
    msg = wire.decode(wire.encode_book(msgpack.Packer(), incarnation, relay_seq, name, 9, Snap,
                                       99, 0))
    return msg._replace(**changes)


@pytest.mark.parametrize("text", ["BTCUSD", "binance-futures", "BTC/USD", "BTC.D", "a*b>c",
                                  "with space", "_hb", "_", "é€", "x" * 64, "BTC_USD"])
def test_tokens_are_valid_nats_tokens_and_unescape_to_the_name(text):
    token = wire.token_escape(text)
    assert token
    assert not any(ch in token for ch in ".*> \t\r\n")
    assert all(ch.isascii() for ch in token)
    assert wire.token_unescape(token) == text


def test_plain_names_stay_as_they_are_and_the_heartbeat_token_is_never_a_name():
    assert wire.token_escape("BTCUSDT") == "BTCUSDT"
    assert wire.book_subject("ob", "colo-1", "binance:BTCUSDT") == "ob.colo-1.binance.BTCUSDT"
    assert wire.heartbeat_subject("ob", "colo-1") == "ob.colo-1._hb"
    with pytest.raises(ValueError):
        wire.token_unescape(wire.HEARTBEAT_TOKEN)
    assert wire.parse_subject("ob.colo-1._hb") == ("colo-1", None)
    assert wire.parse_subject("ob.a_2Eb.kraken.BTC_2FUSD") == ("a.b", "kraken:BTC/USD")


@pytest.mark.parametrize("token", ["", "a_2", "a_zz", "a_2e", "a.b", "_FF", "a_41"])
def test_a_token_no_name_escapes_to_is_refused(token):
    with pytest.raises(ValueError):
        wire.token_unescape(token)


def test_distinct_names_never_share_a_token():
    rng = random.Random(3)
    alphabet = "AB_-./*> é"
    names = {"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6)))
             for _ in range(3000)}
    assert len({wire.token_escape(n) for n in names}) == len(names)


def test_a_book_message_round_trips_exact_integers():
    msg = book()
    assert msg.type == wire.TYPE_BOOK
    assert (msg.incarnation, msg.relay_seq, msg.name, msg.generation) == (5, 1, "binance:BTCUSDT", 9)
    assert (msg.book_seq, msg.update_id, msg.relay_ts_ns, msg.flags) == (8, 1234, 99, 0)
    assert msg.bid_px == [5_000_000, 4_999_999]
    assert msg.bid_sz == [10**12, 1]
    assert msg.ask_px == [5_000_001] and msg.ask_sz == [7]
    assert (msg.price_exp, msg.size_exp) == (-2, -8)
    assert len(msg) == len(wire.BOOK_FIELDS)


def test_a_heartbeat_round_trips_and_extra_trailing_fields_are_ignored():
    hb = wire.Heartbeat(wire.TYPE_HEARTBEAT, wire.SCHEMA_VERSION, 5, 1, 10, 500, True, 9, 8,
                        False, {"binance:BTCUSDT": 3}, {"published": 3})
    payload = wire.encode_heartbeat(msgpack.Packer(), hb)
    assert wire.decode(payload) == hb
    longer = msgpack.packb([*hb, "a field of a later version"])
    assert wire.decode(longer) == hb


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", msgpack.packb({"type": "book"}), msgpack.packb(["book", 1, 2]),
    msgpack.packb(["nope", 1]), msgpack.packb([1, 2, 3]),
    msgpack.packb(["book", 1, 1, "nocolon", 1, 1, 1, 1, 1, 1, 1, 0, -2, -4, [], [], [], []]),
    msgpack.packb(["book", 1, 1, "a:B", 1, 1, 1, 1, 1, 1, 1, 0, -2, -4, [1], [], [], []]),
    msgpack.packb(["book", 1, 1, "a:B", 1, 1, 1, 1, 1, 1, 1, 0, -2, -4, [1.5], [1], [], []]),
    msgpack.packb(["book", 1, 0, "a:B", 1, 1, 1, 1, 1, 1, 1, 0, -2, -4, [], [], [], []]),
    msgpack.packb(["hb", 1, 1, 1, 1, 1, "yes", 1, 1, False, {}, {}]),
    msgpack.packb(["book", 1, 1, "a:B", 1, 1, 1, 1, 1, 1, 1, 0, -2, -4,
                   list(range(wire.LEVELS_MAX + 1)), [], [], []]),
])
def test_bad_bytes_are_a_relay_message_error_naming_why(payload):
    with pytest.raises(wire.RelayMessageError):
        wire.decode(payload)


def test_random_bytes_decode_or_raise_relay_message_error_only():
    rng = random.Random(5)
    good = wire.encode_book(msgpack.Packer(), 1, 1, "a:B", 1, Snap, 1, 0)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            wire.decode(bytes(data[:rng.randrange(1, len(data) + 1)]))
        except wire.RelayMessageError:
            pass


def test_the_sequencer_orders_live_and_fetched_messages_in_any_order():
    seq = wire.BookSequencer()
    assert seq.offer(book(relay_seq=5)) == wire.FIRST       # the last value, fetched
    assert seq.offer(book(relay_seq=4)) == wire.OLD         # live, sent before it: dropped
    assert seq.offer(book(relay_seq=5)) == wire.OLD         # the same message twice
    assert seq.offer(book(relay_seq=6)) == wire.NEXT
    assert seq.offer(book(relay_seq=9)) == wire.GAP         # 7 and 8 lost in transit
    assert (seq.gaps, seq.lost) == (1, 2)
    assert seq.offer(book(incarnation=6, relay_seq=1)) == wire.RESTART
    assert seq.offer(book(incarnation=5, relay_seq=10)) == wire.OLD   # the old relay's, late
    assert seq.offer(book(name="kraken:BTCUSD", incarnation=6, relay_seq=3)) == wire.FIRST
    assert seq.restarts == 1
    assert seq.last("binance:BTCUSDT") == (6, 1)


def test_the_heartbeat_names_the_books_whose_last_message_was_missed():
    seq = wire.BookSequencer()
    seq.offer(book(relay_seq=3))
    hb = wire.Heartbeat(wire.TYPE_HEARTBEAT, 1, 5, 1, 0, 500, True, 9, 0, False,
                        {"binance:BTCUSDT": 4, "kraken:BTCUSD": 1}, {})
    assert seq.behind(hb) == ["binance:BTCUSDT", "kraken:BTCUSD"]
    seq.offer(book(relay_seq=4))
    seq.offer(book(name="kraken:BTCUSD", relay_seq=1))
    assert seq.behind(hb) == []
