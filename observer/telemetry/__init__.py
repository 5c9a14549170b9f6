"""observer.telemetry: what a process says about itself, below every other layer but loom.

`logs` (one structured line per event, text or JSON) and `memtrace` (tracemalloc reports for a
long-running shard, off unless asked for).
"""
