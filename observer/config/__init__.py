"""observer.config: what the user asks for, checked before anything starts.

`settings` (the TOML file's keys, one table, and the frozen `ObserverConfig`), `kinds` (the kind
of value each key holds and its check), `commandline` (the flags, made from the key table), and
`shardplan` (which shard runs which feed: the partition behind `--cores`).
"""
