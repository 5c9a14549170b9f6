"""observer.shard: what runs inside one shard: its feeds and the books they fill.

`runner` (`Shard`: runs its feeds into its `ShardWriter` on one loom loop), `exchangefeed` (one
exchange adapter, its session driver and the books it publishes), `feedplan` (configured feeds
-> book descriptors and the feed objects a shard runs).
"""
