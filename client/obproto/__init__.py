"""obproto: the one source of truth for the segment layout and the control messages.

Shared by the server (observer) and every reader (obclient, obrelay, a C reader): `layout` (the
segment's dtypes and offsets), `latch` (the store and load order of the two-copy latch and the
ring, with its compiled hot paths `_latch_c`), `segment` (the read-only `SegmentReader`),
`snapshot` (a consistent copy and an `Update`), `updates` (ring cursors), `framing` and
`messages` (the control socket's wire), `symbols` (name resolution), `relay` (the NATS schema).
Named obproto because proto-plus (a common Google Cloud dependency) owns the import name proto.
"""
