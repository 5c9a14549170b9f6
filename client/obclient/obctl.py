"""`obctl`: look at a running observer from the shell.

    obctl [--socket PATH] snapshot BOOK [--depth N] [--json]
    obctl [--socket PATH] list [--json]
    obctl [--socket PATH] watch BOOK [--depth N]
    obctl [--socket PATH] stats [--json | --prometheus]

Built on obclient only (never imports the observer): books are read from shared memory like any
strategy reads them, named as obclient names them (`kraken:BTC/USD`, `coinbase:btc-usd`, a bare
`BTCUSD` when one venue has it), `--depth` follows obclient's rule (0: all levels), stats come over the control socket. Prices in JSON are exact decimal
strings made from the stored integers and exponents (C3), never floats.

Every failure a user can cause is one line on stderr and a non-zero exit: 1 when no observer
answers, 2 for a bad command line (argparse's errors too, without the usage dump) or an
unknown or ambiguous book (`BTCUSD is ambiguous: binance:BTCUSD, kraken:BTCUSD`), 3 when the observer refuses the connection (the line is the
observer's own reason: `BUSY: clients_max=256 reached`, `DENIED: uid 65534 not allowed: see
allow_uids ...`). Ctrl-C ends `watch` with 0 and anything else with 130, at any instant:
obclient (numpy) is imported inside `main`, where the interrupt is caught, not at the top of
this module, before it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from decimal import Decimal

EXIT_NO_OBSERVER = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_INTERRUPTED = 130        # 128 + SIGINT, as shells report
DEPTH_DEFAULT = 10
UNIX_PATH_BYTES_MAX = 107     # sun_path, less its terminating NUL
WATCH_REDRAW_S = 0.1          # redraw at most this often
WATCH_IDLE_S = 0.5            # redraw at least this often (the age column moves)


def dec(value: int, exp: int) -> str:
    """The exact decimal text of `value * 10**exp`, never in exponent form."""
    return format(Decimal(int(value)).scaleb(exp), "f")


def snapshot_json(name: str, snap) -> dict:
    return {
        "book": name,
        "bids": [[dec(p, snap.price_exp), dec(s, snap.size_exp)]
                 for p, s in zip(snap.bid_px, snap.bid_sz)],
        "asks": [[dec(p, snap.price_exp), dec(s, snap.size_exp)]
                 for p, s in zip(snap.ask_px, snap.ask_sz)],
        "update_id": int(snap.update_id),
        "seq": int(snap.seq),
        "exch_ts_ns": int(snap.exch_ts_ns),
        "publish_ts_ns": int(snap.publish_ts_ns),
        "stale": snap.stale,
        "lagging": snap.lagging,
    }


def ladder(name: str, snap, now_ns: int | None = None) -> str:
    """Asks above bids, best levels meeting at the spread line."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    age = _age(now_ns - snap.publish_ts_ns) if snap.publish_ts_ns else "never"
    state = "STALE" if snap.stale else ("LAGGING" if snap.lagging else "live")
    px = [dec(p, snap.price_exp) for p in (*snap.ask_px, *snap.bid_px)]
    sz = [dec(s, snap.size_exp) for s in (*snap.ask_sz, *snap.bid_sz)]
    w_px, w_sz = max([len(t) for t in px] + [5]), max([len(t) for t in sz] + [4])
    lines = [f"{name}  update {snap.update_id}  age {age}  {state}",
             f"       {'price':>{w_px}}  {'size':>{w_sz}}"]
    n_asks = len(snap.ask_px)
    for i in reversed(range(n_asks)):
        lines.append(f"  ask  {px[i]:>{w_px}}  {sz[i]:>{w_sz}}")
    lines.append("  " + _spread_text(snap))
    for i in range(n_asks, len(px)):
        lines.append(f"  bid  {px[i]:>{w_px}}  {sz[i]:>{w_sz}}")
    return "\n".join(lines)


def _spread_text(snap) -> str:
    if not len(snap.bid_px) or not len(snap.ask_px):
        return "---- spread n/a (one side empty) ----"
    spread = int(snap.ask_px[0]) - int(snap.bid_px[0])
    mid2 = int(snap.ask_px[0]) + int(snap.bid_px[0])
    bps = 20_000 * spread / mid2 if mid2 else 0.0
    return f"---- spread {dec(spread, snap.price_exp)} ({bps:.3g} bps) ----"


def _age(ns: int) -> str:
    if ns < 1_000_000:
        return f"{max(ns, 0) / 1e3:.0f} us"
    if ns < 10_000_000_000:
        return f"{ns / 1e6:.0f} ms"
    return f"{ns / 1e9:.0f} s"


# -- commands ------------------------------------------------------------------------------------

def cmd_snapshot(client, args) -> int:
    book = client.book(args.symbol)
    snap = book.snapshot(args.depth)
    if args.json:
        print(json.dumps(snapshot_json(book.name, snap), separators=(",", ":")))
    else:
        print(ladder(book.name, snap))
    return 0


def cmd_list(client, args) -> int:
    rows = []
    for info in client.books():
        snap = client.snapshot(info.name, 1)          # the head is all this needs
        rows.append({"book": info.name, "exchange": info.exchange, "symbol": info.symbol,
                     "native": info.native, "shard": info.shard_index,
                     "update_id": int(snap.update_id), "stale": snap.stale})
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    w = max([len(r["book"]) for r in rows] + [4])
    print(f"{'book':<{w}}  {'native':<12}  shard  {'update_id':>10}  state")
    for r in rows:
        print(f"{r['book']:<{w}}  {r['native']:<12}  {r['shard']:>5}  {r['update_id']:>10}  "
              f"{'STALE' if r['stale'] else 'live'}")
    return 0


def cmd_stats(client, args) -> int:
    stats = client.stats()
    if args.prometheus:
        from obclient.prometheus import render

        sys.stdout.write(render(stats.observer, stats.books, stats.clients))
        return 0
    if args.json:
        print(json.dumps({"observer": stats.observer, "books": stats.books,
                          "clients": stats.clients}, separators=(",", ":")))
        return 0
    o = stats.observer
    print(f"observer {o.get('name')}  pid {o.get('pid')}  generation {o.get('generation')}  "
          f"uptime {o.get('uptime_s')} s  clients {o.get('clients')}")
    for sh in o.get("shard_list") or []:
        print(f"shard {sh['shard']}  core {'-' if sh.get('core') is None else sh['core']}  "
              f"pid {sh.get('pid') or '-'}  {'up' if sh.get('alive') else 'DOWN'}  "
              f"restarts {sh.get('restarts', 0)}  books {sh.get('books')}  "
              f"records {sh.get('records')}")
    print(f"{'book':<24} {'updates':>10} {'gaps':>6} {'resyncs':>8} {'cksum_err':>9} "
          f"{'reconnects':>10} {'lag_ms':>8} {'unread_b':>9} {'last_age_s':>10}  state")
    for b in stats.books:
        age = b.get("last_update_age_s")
        state = "STALE" if b.get("stale") else ("LAGGING" if b.get("lagging") else "live")
        print(f"{b['book']:<24} {b['updates']:>10} {b['gaps']:>6} {b['resyncs']:>8} "
              f"{b['checksum_errors']:>9} {b.get('reconnects', 0):>10} "
              f"{b.get('lag_ns', 0) / 1e6:>8.1f} {b.get('unread_bytes', 0):>9} "
              f"{'-' if age is None else age:>10}  {state}")
    if stats.clients:
        print(f"{'client':<24} {'pid':>8} {'subscribed':>10} {'queued':>7} {'sent':>9} "
              f"{'dropped':>8}")
        for c in stats.clients:
            print(f"{(c.get('name') or '-'):<24} {c['pid']:>8} {c['subscribed']:>10} "
                  f"{c['queued']:>7} {c['updates_sent']:>9} {c['dropped']:>8}")
    return 0


def cmd_watch(client, args) -> int:
    book = client.book(args.symbol)
    out = sys.stdout
    try:
        while True:
            snap = book.snapshot(args.depth)
            out.write("\x1b[H\x1b[J" + ladder(book.name, snap) + "\n")
            out.flush()
            _wait_change(client, book.name)
    except KeyboardInterrupt:
        return 0


def _wait_change(client, name: str) -> None:
    """Return after the book changes (at most every WATCH_REDRAW_S) or WATCH_IDLE_S."""
    time.sleep(WATCH_REDRAW_S)
    for _ in client.updates([name], idle_timeout_s=WATCH_IDLE_S):
        return


BOOK_HELP = ("exchange:SYMBOL, or SYMBOL when one venue has it; the symbol normalised (BTCUSD) "
             "or the exchange's own spelling (BTC/USD), any case")
DEPTH_HELP = f"levels a side (default {DEPTH_DEFAULT}; 0: all)"

COMMANDS = {"snapshot": cmd_snapshot, "list": cmd_list, "stats": cmd_stats, "watch": cmd_watch}


class UsageError(Exception):
    """A command line obctl cannot use: one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message.removeprefix("argument "))


def parse_args(argv):
    p = _Parser(prog="obctl", description="Look at a running observer.", allow_abbrev=False,
                epilog=f"exit codes: 0 done, {EXIT_NO_OBSERVER} no observer answers, {EXIT_USAGE} "
                       f"bad command line or unknown book, {EXIT_REFUSED} the observer refused "
                       f"the connection (its reason is printed), {EXIT_INTERRUPTED} interrupted")
    p.add_argument("--socket", type=_socket_path, help="control socket (default: "
                   "$OBSERVER_SOCKET, else observer.sock in $XDG_RUNTIME_DIR or the temp dir)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("snapshot", help="print one book as a ladder")
    s.add_argument("symbol", metavar="BOOK", help=BOOK_HELP)
    s.add_argument("--depth", type=_depth, default=DEPTH_DEFAULT, help=DEPTH_HELP)
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("list", help="list the books")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("watch", help="redraw a book in place until Ctrl-C")
    s.add_argument("symbol", metavar="BOOK", help=BOOK_HELP)
    s.add_argument("--depth", type=_depth, default=DEPTH_DEFAULT, help=DEPTH_HELP)
    s = sub.add_parser("stats", help="observer, book and client counters")
    form = s.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true")
    form.add_argument("--prometheus", action="store_true",
                      help="Prometheus text exposition format (for a textfile collector)")
    return p.parse_args(argv)


def _depth(text: str) -> int:
    """obclient's rule (obclient.check_depth), on text: an integer >= 0, 0 meaning all levels; a
    depth past the observer's is served as the observer's. (obclient imports numpy, which this
    module must not import before `main` catches Ctrl-C.)"""
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9):
        raise argparse.ArgumentTypeError(f"depth must be an integer >= 0 (0: all levels), "
                                         f"got {_shown(text)}")
    return int(digits)


def _shown(text: str, chars_max: int = 40) -> str:
    """A user's text for an error line: repr, cut so a pasted blob stays one readable line."""
    return repr(text) if len(text) <= chars_max else repr(text[:chars_max]) + f"... ({len(text)} chars)"


def _socket_path(text: str) -> str:
    size = len(os.fsencode(text))
    if not text or "\0" in text:
        raise argparse.ArgumentTypeError(f"must be a unix socket path, got {text!r}")
    if size > UNIX_PATH_BYTES_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is {size} bytes; a unix socket path holds "
                                         f"at most {UNIX_PATH_BYTES_MAX}")
    return text


def main(argv=None) -> int:
    command = None
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        command = args.command
        return _run(args)
    except UsageError as exc:
        print(f"obctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:          # Ctrl-C is how `watch` ends; elsewhere, an interruption
        return 0 if command == "watch" else EXIT_INTERRUPTED


def _run(args) -> int:
    import obclient
    from obclient.client import BookNotFound, ObserverUnavailable, RequestFailed, ServerRefused

    try:
        with obclient.connect(args.socket, client_name="obctl") as client:
            return COMMANDS[args.command](client, args)
    except ServerRefused as exc:
        print(f"obctl: refused by the observer: {exc.code_name}: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    except ObserverUnavailable as exc:
        print(f"obctl: {exc}", file=sys.stderr)
        return EXIT_NO_OBSERVER
    except BookNotFound as exc:
        print(f"obctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RequestFailed as exc:
        print(f"obctl: observer refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
