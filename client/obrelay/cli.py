"""`obrelay`: the command. Start-up order, signals, exit status.

    obrelay [--socket PATH] [--name NAME] [--books 'binance:*'] [--depth 10]
            [--nats-url nats://h1:4222,nats://h2:4222] [--creds FILE]
            [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] ...

Start-up: check the settings (exit 2 on a bad one), learn the observer's name if not given
(waiting for the observer), connect to NATS (trying the servers in turn while none answers;
exit 2 when one refuses our credentials or TLS), create or check the last-value stream, choose the
incarnation above the previous relay's, then relay until SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

import obclient
from obrelay.config import RelayConfig, RelayConfigError, build_config, parse_args
from obproto import messages
from obproto import relay as wire

try:    # nats-py is the `relay` extra of obclient: without it, --help works and a run says so
    from obrelay.link import LinkError, NatsLink
    from obrelay.relay import Relay
    NATS_MISSING = ""
except ModuleNotFoundError as exc:
    if exc.name != "nats" and not (exc.name or "").startswith("nats."):
        raise
    NATS_MISSING = "obrelay needs nats-py: pip install 'obclient[relay]'"

log = logging.getLogger("obrelay")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
OBSERVER_WAIT_S = 0.2        # between attempts to reach the observer at start-up


def main(argv=None) -> int:
    try:
        config = build_config(parse_args(argv))
    except RelayConfigError as exc:
        print(f"obrelay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if NATS_MISSING:
        print(f"obrelay: {NATS_MISSING}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s obrelay %(levelname)s %(message)s")
    try:
        return asyncio.run(run(config))
    except LinkError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK


async def run(config: RelayConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    client = obclient.Client(config.socket or messages.default_socket_path(),
                             client_name="obrelay")
    try:
        observer = config.name or await _observer_name(client, stop)
        if observer is None:
            return EXIT_OK
        link = NatsLink(config, client_name=f"obrelay {observer}")
        if not await link.connect(stop):
            return EXIT_OK
        try:
            incarnation = time.time_ns()
            if config.stream:
                await link.ensure_stream(observer)
                incarnation = _next_incarnation(await link.last_heartbeat(observer))
            relay = Relay(config, client, link, observer, incarnation)
            log.info("relaying observer %s as incarnation %d on %s", observer, incarnation,
                     wire.observer_wildcard(config.subject_prefix, observer))
            await relay.run(stop)
        finally:
            await link.close()
    finally:
        client.close()
    return EXIT_OK


async def _observer_name(client, stop: asyncio.Event) -> str | None:
    """The observer's own name (its stats), waiting for it to answer; None if stopped first."""
    warned = False
    while not stop.is_set():
        try:
            return client.stats().observer["name"]
        except obclient.ObserverUnavailable as exc:
            if not warned:
                log.warning("waiting for the observer (%s); or pass --name", exc)
                warned = True
        await _sleep_unless(stop, OBSERVER_WAIT_S)
    return None


def _next_incarnation(last_hb_payload: bytes | None) -> int:
    """Above the clock and above the previous relay's incarnation (a clock may step back)."""
    now_ns = time.time_ns()
    if last_hb_payload is None:
        return now_ns
    try:
        last = wire.decode(last_hb_payload)
    except wire.RelayMessageError as exc:
        log.warning("the stream's last heartbeat is unreadable (%s); using the clock", exc)
        return now_ns
    if type(last) is not wire.Heartbeat:
        return now_ns
    return max(now_ns, last.incarnation + 1)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


if __name__ == "__main__":
    sys.exit(main())
