"""observer.process: the process tree and what each process sets on itself.

`supervisor` (the top process: segment, control socket, fan-out), `zygote` (forks the shard
processes once the segment is sealed), `shardproc` (the code of one shard process),
`shardmanager` (starts, watches and restarts the shard processes), `reaper` (removes the socket
file however the observer dies), `instance` (one observer per name), `prctl` (process
attributes), `stopsignals` (SIGINT/SIGTERM as a clean stop).
"""
