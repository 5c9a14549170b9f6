"""obrelay: relay a local observer's books to NATS, for observers and strategies on other hosts.

A client of the observer like any strategy (it imports obclient and proto, never `observer`):
it follows the update rings, reads each changed book's top levels from shared memory, and
publishes one msgpack message per change on `ob.<observer>.<exchange>.<SYMBOL>`, coalescing per
book (latest wins) when NATS is slower than the feed. A heartbeat on `ob.<observer>._hb` says
the relay and its observer are alive; a JetStream stream keeps each subject's last message so a
receiver that joins late gets every book at once. The wire contract is client/obproto/relay.py and
docs/RELAY.md; the modules here:

- `config`: the command line, checked once (RelayConfig).
- `books`: the followed books and the coalescing queue.
- `link`: the NATS connection, its bounded publishing window, the last-value stream.
- `relay`: the loop that joins them; `cli`: start-up, signals, exit status.
"""
