"""Every malformed config file or command line of `observer` is one line on stderr and exit 2.

Issue 12, point 11. Each case below is a real mistake a user can make; each must give exit
status 2, exactly one line on stderr that names the key or flag and the problem, no traceback,
and leave nothing behind: no socket file, no /dev/shm entry, no process, the instance name free.

Most cases run in this process through `observer.cli.main(argv)`, which is the whole command
except the interpreter's exit; there `loom.Loop` is replaced by a tripwire, so a case that
would start an observer fails instead of running one. A representative set runs as real
processes (`python -m observer.cli`), all at once, for the real exit path.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from observer import cli, loom
from observer.process.instance import InstanceLock
from kit.procs import processes_with, shm_entries, unique_name

WAIT_S = 60.0
ALLOWED = sorted(os.sched_getaffinity(0))
ALLOWED_TEXT = ",".join(map(str, ALLOWED))
RSS_GROWTH_MAX_KB = 64 * 1024       # `--cores 0-99999999` once took 4 GB before any check
SYN = '[[feed]]\nexchange = "synthetic"\nsymbols = ["BTCUSD"]\n'
BIN = '[[feed]]\nexchange = "binance"\nsymbols = ["BTCUSDT"]\n'
KRA = '[[feed]]\nexchange = "kraken"\nsymbols = ["BTC/USD"]\n'
BYB = '[[feed]]\nexchange = "bybit"\nsymbols = ["BTCUSDT"]\n'
LONG_DIR = "d" * 100                 # {dir}/LONG_DIR/observer.sock is past 107 bytes


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]            # {dir}: the case's directory, {config}: its config file
    fragment: str                    # what the one line must say (besides naming the place)
    config: str | bytes | None = None
    env: tuple[tuple[str, str], ...] = ()
    place: str = ""                  # where the line must say it is (file line, table, key)


def toml(id: str, text: str | bytes, fragment: str, *argv: str) -> Case:
    return Case(id, ("--config", "{config}", *argv), fragment, config=text)


def obs(key: str, value: str, fragment: str, feeds: str = SYN) -> Case:
    """`key = value` in [observer]; the line is the 2nd of the file."""
    return Case(f"observer-{key}-{value}"[:60], ("--config", "{config}"), fragment,
                config=f"[observer]\n{key} = {value}\n{feeds}", place=f":2: [observer] {key}: ")


def feed(key: str, value: str, fragment: str, base: str = SYN) -> Case:
    """`key = value` in the one [[feed]] (on the file's 4th line)."""
    exchange = base.split('"')[1]
    return Case(f"feed-{exchange}-{key}-{value}"[:60], ("--config", "{config}"), fragment,
                config=f"{base}{key} = {value}\n", place=f":4: [[feed]] #1 {key}: ")


def flags(id: str, fragment: str, *argv: str) -> Case:
    return Case(id, argv, fragment)


NAN_RANGE = "must be a finite number from 0.001 to 1000000, got"
LAG_RANGE = "must be a finite number from 1 to 86400000, got"

CASES = [
    # -- the file itself ----------------------------------------------------------------------
    toml("not-utf8", b"\xff\xfe[observer]\n", ":1: not UTF-8 text (byte 0xff at offset 0)"),
    toml("not-utf8-line-3", b'[observer]\ndepth = 5\nname = "caf\xe9"\n', ":3: not UTF-8 text"),
    toml("not-toml", "x = = 1\n", "not valid TOML"),
    toml("not-toml-header", "[observer\n", "not valid TOML"),
    toml("toml-duplicate-key", "[observer]\ndepth = 1\ndepth = 2\n", "not valid TOML"),
    toml("toml-huge-integer", "[observer]\ndepth = " + "9" * 5000 + "\n", "a number too long"),
    toml("toml-deep-nesting", "x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    toml("too-large", "# " + "x" * (1 << 20) + "\n", "larger than config_bytes_max"),
    Case("config-missing", ("--config", "{dir}/missing.toml"), "cannot read: No such file"),
    Case("config-directory", ("--config", "{dir}"), "cannot read: Is a directory"),
    Case("config-empty-path", ("--config", ""), "cannot read: No such file"),
    toml("unknown-table", "[observr]\nname = 'x'\n" + SYN, "unknown table observr"),
    toml("observer-not-a-table", "observer = 5\n" + SYN, "observer must be a table"),
    toml("feed-not-an-array", "feed = 1\n", "feed must be an array of tables"),
    toml("feed-single-table", '[feed]\nexchange = "synthetic"\n', "feed must be an array"),
    toml("too-many-feeds", "".join(SYN.replace("BTCUSD", f"S{i}") for i in range(65)),
         "65 feeds, more than feeds_max=64"),
    # -- [observer] ------------------------------------------------------------------------------
    obs("depth", "0", "must be an integer from 1 to 1000, got 0"),
    obs("depth", "1001", "must be an integer from 1 to 1000, got 1001"),
    obs("depth", "1.5", "got 1.5"),
    obs("depth", "true", "got True"),
    obs("depth", '"5"', "got '5'"),
    obs("name", '""', "must be 1 to 32 ASCII letters"),
    obs("name", '"a b"', "got 'a b'"),
    obs("name", '"' + "n" * 33 + '"', "must be 1 to 32"),
    obs("name", '"a\\u001b[31m"', "got 'a\\x1b[31m'"),
    obs("socket", '""', "must be a unix socket path, got ''"),
    obs("socket", '"/' + "s" * 120 + '"', "is 121 bytes; a unix socket path holds at most 107"),
    obs("backend", '"EPOLL"', "must be one of io_uring, epoll, kqueue"),
    obs("wake", '"always"', "must be one of auto, eventfd, io_uring"),
    obs("wake_ahead", "1", "must be true or false, got 1"),
    obs("log_format", '"xml"', "must be one of text, json"),
    obs("log_level", '"INFO"', "got 'INFO'"),
    obs("lag_bound_ms", "nan", f"{LAG_RANGE} nan"),
    obs("lag_bound_ms", "inf", f"{LAG_RANGE} inf"),
    obs("lag_bound_ms", "-1", f"{LAG_RANGE} -1"),
    obs("lag_bound_ms", "0", f"{LAG_RANGE} 0"),
    obs("lag_bound_ms", "true", f"{LAG_RANGE} True"),
    obs("allow_uids", '["root"]', "got 'root' (give the number"),
    obs("allow_uids", "[-1]", "from 0 to 4294967294, got -1"),
    obs("allow_uids", "[4294967296]", "got 4294967296"),
    obs("allow_gids", "[4294967295]", "got 4294967295"),
    obs("allow_uids", "[1000, 1000]", "lists uid 1000 twice"),
    obs("allow_gids", "1000", "must be a list of gid numbers"),
    obs("allow_uids", "[1.5]", "got 1.5"),
    obs("allow_gids", "[true]", "got True"),
    obs("cores", "[]", "must be a non-empty list of core numbers"),
    obs("cores", "[-1]", "got -1"),
    obs("cores", "[0, 0]", "lists core 0 twice"),
    obs("cores", '"0-1"', "got '0-1'"),
    toml("observer-unknown-key", "[observer]\ndepht = 5\n" + SYN, ":2: [observer] depht: unknown key"),
    toml("observer-cores-missing", f"[observer]\ncores = [{ALLOWED[-1] + 1}]\n" + SYN,
         f".toml: cores: core(s) {ALLOWED[-1] + 1} do not exist"),   # the file's key, not --cores
    toml("observer-backend-kqueue", '[observer]\nbackend = "kqueue"\n' + SYN,
         "backend kqueue: not available on this machine"),
    # -- [[feed]] --------------------------------------------------------------------------------
    toml("feed-no-exchange", '[[feed]]\nsymbols = ["A"]\n', ":1: [[feed]] #1: exchange is required"),
    toml("feed-no-symbols", '[[feed]]\nexchange = "binance"\n', "[[feed]] #1: symbols is required"),
    toml("feed-exchange-unknown", '[[feed]]\nexchange = "mtgox"\nsymbols = ["A"]\n',
         ":2: [[feed]] #1 exchange: must be one of binance"),
    toml("feed-exchange-empty", '[[feed]]\nexchange = ""\nsymbols = ["A"]\n', "got ''"),
    toml("feed-symbols-empty", '[[feed]]\nexchange = "binance"\nsymbols = []\n',
         ":3: [[feed]] #1 symbols: must be a non-empty list of symbols"),
    toml("feed-symbol-blank", '[[feed]]\nexchange = "binance"\nsymbols = [" "]\n', "got ' '"),
    toml("feed-symbol-space", '[[feed]]\nexchange = "binance"\nsymbols = ["BTC USD"]\n',
         "got 'BTC USD'"),
    toml("feed-symbol-not-text", '[[feed]]\nexchange = "binance"\nsymbols = [1]\n', "got 1"),
    toml("feed-symbols-string", '[[feed]]\nexchange = "binance"\nsymbols = "BTCUSDT"\n',
         "got 'BTCUSDT'"),
    toml("feed-symbol-twice", '[[feed]]\nexchange = "binance"\nsymbols = ["BTCUSDT", "btcusdt"]\n',
         "binance:btcusdt is configured twice"),
    toml("feed-twice", SYN + SYN, "synthetic:BTCUSD is configured twice (feeds #1 and #2)"),
    toml("feed-spelling-twice", '[[feed]]\nexchange = "kraken"\nsymbols = ["XBT/USD", "BTC/USD"]\n',
         "kraken: symbol 'BTC/USD' listed twice"),
    toml("feed-symbol-too-long", SYN.replace("BTCUSD", "X" * 49), "is longer than 48 bytes"),
    toml("feed-unknown-key", SYN + "sede = 1\n", ":4: [[feed]] #1 sede: unknown key"),
    toml("feed-second-bad", SYN + BIN + "depth = 0\n", ":7: [[feed]] #2 depth: must be"),
    feed("ws_url", '"http://x"', "must be ws://HOST[:PORT][/PATH] or wss://", BIN),
    feed("ws_url", '"wss://h:99999"', "(the port must be 1 to 65535)", BIN),
    feed("ws_url", '"wss://h:0"', "(the port must be 1 to 65535)", BIN),
    feed("ws_url", '"wss://h/x?y=1"', "(no query, fragment or user name)", BIN),
    feed("ws_url", '""', "got ''", BIN),
    feed("ws_url", '"wss://h/a b"', "got 'wss://h/a b'", BIN),
    feed("rest_url", '"ftp://h"', "must be http://HOST", BIN),
    feed("rest_url", '"https://h"', "applies to binance, binance-futures, bybit feeds only, "
         "not kraken", KRA),
    feed("ca_file", '"{dir}/missing.pem"', "No such file or directory", BIN),
    feed("ca_file", '"{dir}"', "is not a regular file", BIN),
    feed("ca_file", '"{dir}/not-a-ca.pem"', "holds no usable PEM certificate", BIN),
    feed("ca_file", '""', "must be a readable PEM CA file, got ''", BIN),
    feed("ca_file", '"{dir}/not-a-ca.pem"', "does not apply to synthetic feeds"),
    feed("category", '"spot"', "applies to bybit feeds only, not kraken", KRA),
    feed("category", '"option"', "must be one of spot, linear, got 'option'", BYB),
    feed("depth", "0", "must be an integer from 1 to 1000, got 0"),
    feed("shard", "-1", "must be an integer from 0 to 255, got -1"),
    toml("feed-shard-without-cores", SYN + "shard = 1\n", "without --cores"),
    feed("rate_hz", "nan", f"{NAN_RANGE} nan"),
    feed("rate_hz", "1e-300", f"{NAN_RANGE} 1e-300"),
    feed("rate_hz", "inf", f"{NAN_RANGE} inf"),
    feed("rate_hz", "-5", f"{NAN_RANGE} -5"),
    feed("rate_hz", "0", f"{NAN_RANGE} 0"),
    feed("rate_hz", "true", f"{NAN_RANGE} True"),
    feed("rate_hz", "1" + "0" * 400, NAN_RANGE),
    feed("rate_hz", "5", "applies to synthetic feeds only, not binance", BIN),
    feed("seed", "-1", "must be an integer from 0 to 9223372036854775807, got -1"),
    feed("seed", "1.5", "got 1.5"),
    # -- flags -----------------------------------------------------------------------------------
    flags("rate-nan", f"--rate: {NAN_RANGE} 'nan'", "--feed", "synthetic:A", "--rate", "nan"),
    flags("rate-inf", f"--rate: {NAN_RANGE} 'inf'", "--feed", "synthetic:A", "--rate", "inf"),
    flags("rate-tiny", f"--rate: {NAN_RANGE} '1e-300'", "--feed", "synthetic:A", "--rate", "1e-300"),
    flags("rate-negative", f"--rate: {NAN_RANGE} '-1'", "--feed", "synthetic:A", "--rate", "-1"),
    flags("rate-text", f"--rate: {NAN_RANGE} 'fast'", "--feed", "synthetic:A", "--rate", "fast"),
    flags("rate-no-synthetic", "--rate: applies to synthetic feeds, and none is configured",
          "--feed", "binance:BTCUSDT", "--rate", "5"),
    flags("seed-negative", "--seed: must be an integer from 0", "--feed", "synthetic:A", "--seed", "-1"),
    flags("seed-digits", "--seed: must be an integer", "--feed", "synthetic:A", "--seed", "٣"),
    flags("depth-zero", "--depth: must be an integer from 1 to 1000, got 0", "--feed", "synthetic:A",
          "--depth", "0"),
    flags("depth-text", "--depth: must be an integer from 1 to 1000, got 'x'", "--feed",
          "synthetic:A", "--depth", "x"),
    flags("lag-nan", f"--lag-bound-ms: {LAG_RANGE} 'nan'", "--feed", "synthetic:A",
          "--lag-bound-ms", "nan"),
    flags("backend-kqueue", "backend kqueue: not available on this machine (kqueue:", "--feed",
          "synthetic:A", "--backend", "kqueue"),
    flags("backend-unknown", "--backend: must be one of io_uring, epoll, kqueue, got 'uv'",
          "--feed", "synthetic:A", "--backend", "uv"),
    flags("backend-empty", "--backend: must be one of", "--feed", "synthetic:A", "--backend", ""),
    flags("wake-unknown", "--wake: must be one of auto, eventfd, io_uring", "--feed", "synthetic:A",
          "--wake", "always"),
    flags("log-level-case", "--log-level: must be one of debug, info, warning, error, got 'INFO'",
          "--feed", "synthetic:A", "--log-level", "INFO"),
    flags("cores-huge-range", "--cores: core(s) ", "--feed", "synthetic:A", "--cores", "0-99999999"),
    flags("cores-missing", f"do not exist or are not allowed for this process; allowed cores: "
          f"{ALLOWED_TEXT}", "--feed", "synthetic:A", "--cores",
          f"{ALLOWED[-1] + 1},{ALLOWED[-1] + 2}"),
    flags("cores-backwards", "--cores '1-0': range 1-0 runs backwards", "--feed", "synthetic:A",
          "--cores", "1-0"),
    flags("cores-empty", "--cores '': expected a list like 2,3 or 0-3", "--feed", "synthetic:A",
          "--cores", ""),
    flags("cores-twice", "--cores '0,0': lists core 0 twice", "--feed", "synthetic:A", "--cores", "0,0"),
    flags("socket-empty", "--socket: must be a unix socket path, got ''", "--feed", "synthetic:A",
          "--socket", ""),
    flags("socket-long", "bytes; a unix socket path holds at most 107", "--feed", "synthetic:A",
          "--socket", "{dir}/" + LONG_DIR + "/observer.sock"),
    Case("socket-default-long", ("--feed", "synthetic:A"), "socket (default, from $OBSERVER_SOCKET",
         env=(("OBSERVER_SOCKET", "/" + "e" * 120),)),
    flags("name-empty", "--name: must be 1 to 32 ASCII letters", "--feed", "synthetic:A", "--name", ""),
    flags("name-slash", "--name: must be 1 to 32", "--feed", "synthetic:A", "--name", "a/b"),
    flags("ca-file-missing", "--ca-file: '{dir}/missing.pem': No such file", "--feed",
          "binance:BTCUSDT", "--ca-file", "{dir}/missing.pem"),
    flags("ca-file-not-pem", "--ca-file: '{dir}/not-a-ca.pem' holds no usable PEM", "--feed",
          "binance:BTCUSDT", "--ca-file", "{dir}/not-a-ca.pem"),
    flags("ca-file-unused", "--ca-file: applies to --feed feeds that connect", "--feed",
          "synthetic:A", "--ca-file", "{dir}/ca.pem"),
    flags("feed-empty", "--feed '': expected EXCHANGE:SYMBOL[,SYMBOL...]", "--feed", ""),
    flags("spec-no-symbols", "--feed 'synthetic': expected EXCHANGE:SYMBOL", "--feed", "synthetic"),
    flags("spec-no-exchange", "--feed ':BTCUSD': expected EXCHANGE:SYMBOL", "--feed", ":BTCUSD"),
    flags("feed-empty-symbol", "--feed 'synthetic:A,,B': symbols: must be a non-empty list",
          "--feed", "synthetic:A,,B"),
    flags("spec-exchange-unknown", "--feed 'nosuch:X': exchange: must be one of", "--feed", "nosuch:X"),
    flags("feed-category-unknown", "category: must be one of spot, linear, got 'option'",
          "--feed", "bybit/option:BTCUSDT"),
    flags("feed-category-not-bybit", "category: applies to bybit feeds only, not binance",
          "--feed", "binance/linear:BTCUSDT"),
    flags("spec-twice", "synthetic:A is configured twice", "--feed", "synthetic:A", "--feed",
          "synthetic:A"),
    flags("no-feeds", "no feeds: give --feed EXCHANGE:SYMBOLS or a --config file"),
    Case("feed-and-config-feeds", ("--config", "{config}", "--feed", "synthetic:B"),
         "--feed: the config file already gives 1 [[feed]] table(s)", config=SYN),
    flags("flag-twice", "--depth: given twice", "--feed", "synthetic:A", "--depth", "5", "--depth", "6"),
    flags("flag-unknown", "unrecognized arguments: --bogus", "--feed", "synthetic:A", "--bogus"),
    flags("flag-abbreviated", "unrecognized arguments: --dep", "--feed", "synthetic:A", "--dep", "5"),
    flags("flag-no-value", "--rate: expected one argument", "--feed", "synthetic:A", "--rate"),
    flags("positional", "unrecognized arguments: extra", "--feed", "synthetic:A", "extra"),
]
SUBPROCESS_CASES = ("not-utf8", "observer-allow_uids-[\"root\"]", "feed-synthetic-rate_hz-nan",
                    "observer-lag_bound_ms-nan", "rate-nan", "backend-kqueue", "cores-huge-range",
                    "socket-long", "flag-unknown")


assert len(CASES) >= 50
assert len({case.id for case in CASES}) == len(CASES)          # one pytest id per case
assert set(SUBPROCESS_CASES) <= {case.id for case in CASES}


@pytest.fixture
def signals_restored():
    """cli.main takes SIGINT/SIGTERM for its process (by design); give them back to pytest."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.fixture
def no_loop(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("the observer started: this input was accepted")

    monkeypatch.setattr(loom, "Loop", tripwire)


def prepare(case: Case, tmp_path) -> tuple[list[str], str, str]:
    """The argv with paths filled in, plus the name and socket path the case runs under."""
    (tmp_path / "not-a-ca.pem").write_text("not a certificate\n")
    from obsim.tls import make_certificates

    if "{dir}/ca.pem" in " ".join(case.argv):
        make_certificates(tmp_path)
    fill = {"{dir}": str(tmp_path), "{config}": str(tmp_path / "observer.toml")}

    def filled(text):
        for mark, value in fill.items():
            text = text.replace(mark, value)
        return text

    if case.config is not None:
        path = tmp_path / "observer.toml"
        if isinstance(case.config, bytes):
            path.write_bytes(case.config)
        else:
            path.write_text(filled(case.config), encoding="utf-8")
    argv = [filled(a) for a in case.argv]
    name = unique_name("bad")
    socket_path = str(tmp_path / "observer.sock")
    if "--name" not in argv:
        argv += ["--name", name]
    if "--socket" not in argv and not case.env:
        argv += ["--socket", socket_path]
    return argv, name, socket_path


def check_refused(case: Case, code, stderr: str, stdout: str, name: str, socket_path: str,
                  tmp_path) -> None:
    lines = stderr.splitlines()
    fragment = case.fragment.replace("{dir}", str(tmp_path))
    assert code == cli.EXIT_USAGE, (case.id, code, stderr)
    assert "Traceback" not in stderr, (case.id, stderr)
    assert len(lines) == 1, (case.id, stderr)
    assert lines[0].startswith("observer: "), (case.id, stderr)
    assert fragment in lines[0], (case.id, lines[0])
    assert case.place in lines[0], (case.id, lines[0])
    assert stdout == "", (case.id, stdout)
    assert not os.path.exists(socket_path), case.id
    assert shm_entries(name) == [], case.id
    assert processes_with(name) == [], case.id
    lock = InstanceLock(name)
    lock.acquire()                  # the name is free
    lock.release()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch,
                                          signals_restored, no_loop):
    argv, name, socket_path = prepare(case, tmp_path)
    for key, value in case.env:
        monkeypatch.setenv(key, value)
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        code = cli.main(argv)
    except SystemExit as exc:       # argparse's own exit: the usage dump this test forbids
        code = exc.code
    rss_growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kb
    captured = capsys.readouterr()
    check_refused(case, code, captured.err, captured.out, name, socket_path, tmp_path)
    assert rss_growth_kb < RSS_GROWTH_MAX_KB, (case.id, rss_growth_kb)


def test_bad_input_as_real_processes(tmp_path):
    """The representative set through the real exit path, started together."""
    runs = []
    for case in (c for c in CASES if c.id in SUBPROCESS_CASES):
        case_dir = tmp_path / case.id.replace("/", "_").replace('"', "")
        case_dir.mkdir()
        argv, name, socket_path = prepare(case, case_dir)
        proc = subprocess.Popen([sys.executable, "-m", "observer.cli", *argv], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, env=dict(os.environ, **dict(case.env)))
        runs.append((case, proc, name, socket_path, case_dir))
    try:
        for case, proc, name, socket_path, case_dir in runs:
            stdout, stderr = proc.communicate(timeout=WAIT_S)
            check_refused(case, proc.returncode, stderr, stdout, name, socket_path, case_dir)
    finally:
        for _, proc, *_ in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- obctl and obsim: the same class of mistakes, the same one line and exit 2 ------------------

OBCTL_CASES = [
    (("snapshot", "BTCUSD", "--depth", "x"), "--depth: depth must be an integer >= 0 (0: all levels), got 'x'"),
    (("snapshot", "BTCUSD", "--depth", "-1"), "--depth: depth must be an integer >= 0 (0: all levels), got '-1'"),
    (("snapshot", "BTCUSD", "--depth", "9" * 5000), "(5000 chars)"),
    (("--socket", "", "list"), "--socket: must be a unix socket path, got ''"),
    (("--socket", "/" + "s" * 120, "list"), "is 121 bytes; a unix socket path holds at most 107"),
    (("bogus",), "invalid choice: 'bogus'"),
    ((), "the following arguments are required: command"),
    (("snapshot",), "the following arguments are required: BOOK"),
    (("stats", "--json", "--prometheus"), "not allowed with argument --json"),
    (("list", "--sock", "x"), "unrecognized arguments: --sock x"),
]
OBSIM_CASES = [
    (("--rate", "nan"), "--rate: must be a number >= 0.0, got 'nan'"),
    (("--rate", "-1"), "--rate: must be a number >= 0.0, got '-1'"),
    (("--depth", "0"), "--depth: must be an integer >= 1 and <= 100000, got '0'"),
    (("--depth", "10000000000"), "--depth: must be an integer >= 1 and <= 100000"),
    (("--tick-s", "0"), "--tick-s: must be a number > 0.0, got '0'"),
    (("--okx-idle-s", "inf"), "--okx-idle-s: must be a number > 0.0, got 'inf'"),
    (("--log-level", "loud"), "--log-level: invalid choice: 'LOUD'"),
    (("--tmp-dir", "/nonexistent-dir"), "--tmp-dir '/nonexistent-dir' is not a directory"),
    (("--exchanges", ""), "unknown exchange ''"),
    (("--exchanges", "okx,okx"), "names an exchange twice"),
    (("--symbols", "BTC"), "--symbols: 'BTC' is not BASE/QUOTE"),
    (("--symbol", "kraken"), "--symbol 'kraken': expected EXCHANGE=SYM[,SYM...]"),
    (("--exchanges", "okx", "--symbol", "kraken=BTC/USD"), "names exchange 'kraken' that is not served"),
    (("--fault", "kraken:gap:at_s=abc"), "must be a number >= 0.0 and <= 86400.0, got 'abc'"),
    (("--fault", "kraken:nosuch"), "kraken has no fault 'nosuch'"),
    (("--fault", "kraken:gap:symbol=NOPE"), "kraken serves no symbol 'NOPE'"),
    (("--fault", "kraken:gap:count=0"), "must be an integer >= 1, got '0'"),
    (("--fault", "kraken"), "is not EXCHANGE:KIND"),
    (("--source", "replay"), "--source replay needs --recordings DIR"),
    (("--source", "replay", "--recordings", "/nonexistent-dir"), "--recordings '/nonexistent-dir':"),
    (("--bogus",), "unrecognized arguments: --bogus"),
]


def _one_line(prog: str, code, stderr: str, fragment: str) -> None:
    lines = stderr.splitlines()
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: ") and fragment in lines[0], lines[0]


@pytest.mark.parametrize("argv,fragment", OBCTL_CASES, ids=lambda v: " ".join(v)[:40]
                         if isinstance(v, tuple) else None)
def test_obctl_bad_command_line_is_one_line_and_exit_2(argv, fragment, capsys):
    from obclient import obctl

    try:
        code = obctl.main(list(argv))
    except SystemExit as exc:       # argparse's own exit, with the usage dump
        code = exc.code
    _one_line("obctl", code, capsys.readouterr().err, fragment)


@pytest.mark.parametrize("argv,fragment", OBSIM_CASES, ids=lambda v: " ".join(v)[:40]
                         if isinstance(v, tuple) else None)
def test_obsim_bad_command_line_is_one_line_and_exit_2(argv, fragment, capsys, monkeypatch):
    from obsim import cli as obsim

    def tripwire(coro):
        coro.close()
        raise AssertionError("obsim started: this command line was accepted")

    monkeypatch.setattr(obsim.asyncio, "run", tripwire)
    try:
        code = obsim.main(list(argv))
    except SystemExit as exc:       # argparse's exit, or a SystemExit("obsim: ...") (status 1)
        code = exc.code if isinstance(exc.code, int) else 1
        print(exc.code if not isinstance(exc.code, int) else "", file=sys.stderr)
    _one_line("obsim", code, capsys.readouterr().err, fragment)
