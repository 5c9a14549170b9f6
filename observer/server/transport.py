"""One admitted client's transport: a reader and a writer fiber around its protocol machine.

Why two fibers: replies and pushed updates must go out while requests come in, and a client
that stops reading must block nobody but itself. The reader receives into the client's buffer
and feeds the sans-IO machine (protocol.py); the writer sends what the machine queued: replies
first, then batches of pushed updates.

Back pressure (issue 12, point 4). When the machine pauses (its unsent replies passed the
high-water mark) the reader stops receiving and waits for `drained`, which the writer posts once
it has sent the replies down to the low-water mark; the client's own sends then block in its
kernel buffer. Nothing is closed for not reading, nothing is dropped, and what the server holds
for the client stays bounded by the machine's limits.

Deadlines. Before hello a connection may wait `hello_timeout_s` in all; after it, one with no
subscription may wait `idle_s` from its last complete message (not its last byte: a trickle of
bytes is no message). The server's sweep (control.py) checks `deadline_s()` a few times per
limit and `silence()`s a connection past it: a read-side shutdown ends the reader's wait, and
the reader tells the client why (NOT_READY or IDLE) and closes. A sweep, not a timer on each
recv: arming and cancelling one per request cost a tenth of a request's round trip. While its
reader is held back there is no deadline: the client is busy not reading our replies, and the
server is the one not receiving.

Closing. Every close the server decides is preceded by an `error` saying why, queued behind the
replies before it; the writer has `CLOSE_FLUSH_S` to send them. `abort` ends both fibers,
closes the socket and drops every buffer at once, so a dead client costs nothing while its
finished fibers wait for the cyclic collector.
"""

from __future__ import annotations

import logging
import socket
import time

from observer import loom
from observer.telemetry.logs import log_event
from obproto import framing
from obproto import messages as m

log = logging.getLogger("observer.server")

RECV_BYTES_MAX = 16 * 1024 + framing.HEADER_BYTES   # one largest request per recv
SEND_BATCH_BYTES_MAX = 64 * 1024      # replies joined into one send (pipelined requests)
CLOSE_FLUSH_S = 1.0                   # how long a closing client's last replies may take to send
FDS_PER_MESSAGE_MAX = 253             # Linux SCM_MAX_FD
assert RECV_BYTES_MAX >= m.REQUEST_BYTES_MAX + framing.HEADER_BYTES


class ClientTransport:
    """One connected client: its socket, protocol machine, and two fibers."""

    def __init__(self, server, conn: socket.socket, proto):
        self.server = server
        self.conn = conn
        self.proto = proto
        self.recv_buf: bytearray | None = bytearray(RECV_BYTES_MAX)
        self.recv_view: memoryview | None = memoryview(self.recv_buf)
        self.wakeup = loom.Event()            # the writer: something to send
        self.drained = loom.Event()           # the reader: the machine is no longer paused
        self.reader = None
        self.writer = None
        self.sending = False                  # in a send: the stream may be mid-frame
        self.held = False                     # the reader waits for replies to drain
        self.silenced = False                 # past its deadline: the reader's wait was ended
        self.closed = False
        self.accepted_s = time.monotonic()
        self.last_message_s = self.accepted_s

    def start(self) -> None:
        self.conn.setblocking(False)
        name = f"control-{self.proto.conn_id}"
        self.reader = self.server.loop.spawn(self._read_loop, name=name + "-read")
        self.writer = self.server.loop.spawn(self._write_loop, name=name + "-write")

    def wake(self) -> None:
        self.wakeup.post()

    # -- reading -----------------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            self._read()
            self._finish_after_flush()
        except loom.Cancelled as exc:
            raise _without_inner_frames(exc)
        finally:
            self.abort()              # whatever ended the reader (a bug too), the slot is freed

    def _read(self) -> None:
        proto = self.proto
        try:
            while not proto.closing:
                if proto.paused:
                    self._wait_drained()
                    continue
                if proto.backlogged:
                    loom.sleep(0)         # the others' turn before our next batch of requests
                    proto.resume()
                    self.wakeup.post()
                    continue
                n = loom.recv_into(self.conn, self.recv_buf)
                if self.closed:
                    return            # aborted while this recv completed: its bytes are moot
                if not n and self.silenced:
                    self._close_for_silence()
                    break
                seen = proto.messages_received
                proto.receive_data(self.recv_view[:n])
                if proto.messages_received != seen:
                    self.last_message_s = time.monotonic()
                self.wakeup.post()
        except OSError as exc:
            proto.close(f"recv failed: {exc}")
        self.wakeup.post()

    def deadline_s(self) -> float | None:
        """When silence ends this connection (monotonic seconds), or None while it may not."""
        proto = self.proto
        if self.held or self.silenced or proto.closing:
            return None
        if not proto.version:                 # a peer that never says hello must not hold a slot
            return self.accepted_s + self.server.hello_timeout_s
        if proto.subscribed or not proto.idle_s:
            return None
        return self.last_message_s + proto.idle_s

    def silence(self) -> bool:
        """Past its deadline: end the reader's wait (it then says why, and closes). Not while
        bytes wait unread (False): then the reader is behind, not the client."""
        try:
            if self.conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                return False
        except OSError:
            pass                                 # nothing waiting (EAGAIN), or gone
        self.silenced = True
        try:
            self.conn.shutdown(socket.SHUT_RD)   # its pending recv returns 0
        except OSError:
            pass                                 # already gone: the reader sees that too
        return True

    def _wait_drained(self) -> None:
        """Back pressure: receive nothing until the writer has sent the replies down."""
        self.drained.clear()
        if self.proto.paused:
            self.held = True
            self.drained.wait()
            self.held = False
        self.last_message_s = time.monotonic()   # the silence was ours, not the client's
        self.proto.resume()
        self.wakeup.post()

    def _close_for_silence(self) -> None:
        proto = self.proto
        if not proto.version:
            proto.close_with_error(m.ErrorCode.NOT_READY,
                                   f"no hello within {self.server.hello_timeout_s} s; closing")
            return
        self.server.closed_idle += 1
        proto.close_with_error(m.ErrorCode.IDLE,
                               f"idle: no subscription and no message for client_idle_s="
                               f"{proto.idle_s:g} s; closing (send ping to stay)")

    # -- writing -----------------------------------------------------------------------------

    def _write_loop(self) -> None:
        try:
            self._write()
        except loom.Cancelled as exc:
            raise _without_inner_frames(exc)
        except OSError as exc:
            self.proto.close(f"send failed: {exc}")
            self.abort()
        except BaseException:
            self.abort()              # a bug: contained to this client, and its slot freed
            raise

    def _write(self) -> None:
        """Replies first, then pushed updates; returns once closing and the replies are sent."""
        proto = self.proto
        while True:
            if proto.outbound:
                self._send_replies()
                continue
            if proto.closing:
                return
            batch = proto.take_updates()
            if batch is not None:
                self._sendall(batch)
                continue
            self.wakeup.clear()
            if not proto.has_output() and not proto.closing:
                self.wakeup.wait()

    def _send_replies(self) -> None:
        """Send the next reply with its fds, or several fd-less replies as one send."""
        proto = self.proto
        out = proto.pop_outbound()
        if out.fds:
            data = out.data
        else:
            parts, size = [out.data], len(out.data)
            while (proto.outbound and not proto.outbound[0].fds
                   and size < SEND_BATCH_BYTES_MAX):
                part = proto.pop_outbound().data
                parts.append(part)
                size += len(part)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        if not proto.paused:
            self.drained.post()       # the reader may go on while this send waits
        if out.fds:
            try:
                self._send_with_fds(data, out.fds)
            finally:
                out.release()         # sent (the client has its copies) or failed: ours go
        else:
            self._sendall(data)

    def _sendall(self, data) -> None:
        self.sending = True
        loom.sendall(self.conn, data)
        self.sending = False

    def _send_with_fds(self, data: bytes, fds: tuple) -> None:
        assert len(fds) <= FDS_PER_MESSAGE_MAX
        while True:
            try:
                sent = socket.send_fds(self.conn, [data], list(fds))
                break
            except BlockingIOError:
                loom.wait_writable(self.conn)
        if sent < len(data):
            self._sendall(memoryview(data)[sent:])

    def say_goodbye(self, code: int, text: str) -> None:
        """A last `error` written now, without waiting, if the stream is between frames (a
        client whose writer is blocked mid-frame does not read anyway)."""
        if self.closed or self.sending:
            return
        frame = framing.encode_frame(self.server.codec.encode(m.Error(0, code, text)),
                                     m.REPLY_BYTES_MAX)
        try:
            self.conn.send(frame, socket.MSG_DONTWAIT)
        except OSError:
            pass
        self.proto.close(text)

    # -- closing -----------------------------------------------------------------------------

    def _finish_after_flush(self) -> None:
        """Give the writer CLOSE_FLUSH_S to send the last replies (the caller then aborts)."""
        if self.closed:
            return                    # aborted meanwhile: nothing left to send
        try:
            self.writer.join(CLOSE_FLUSH_S)
        except TimeoutError:
            pass                      # it never read: its last replies are lost with it
        except (OSError, loom.LoomError):
            pass                      # the writer failed; it already asked to close

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        current = _current_fiber()
        for fiber in (self.reader, self.writer):
            if fiber is not None and fiber is not current and not fiber.done:
                fiber.cancel()
        self.server.forget_client(self)
        self.server.loop.forget(self.conn)
        self.conn.close()
        proto = self.proto
        # once per client, with who it was and why it went
        log_event(log, "client_disconnected", conn=proto.conn_id,
                  client=proto.client_name or "-", pid=proto.peer[0],
                  reason=proto.close_reason or "closed by the observer",
                  clients=len(self.server.clients))
        # A finished fiber keeps its function (a bound method of this object) until the cyclic
        # collector frees it: drop the buffers now, so that costs a few small objects only.
        self.recv_buf = self.recv_view = None
        self.reader = self.writer = None
        proto.release()


def _without_inner_frames(exc: BaseException) -> BaseException:
    """`exc` without the frames it passed through.

    Discussion: a cancelled fiber keeps its error for `join`, and the fiber lives until the
    cyclic collector frees it. Its traceback would keep every frame below the fiber's function
    and their locals (a reply being sent can be a megabyte) as long; the cancel itself is all a
    joiner needs.
    """
    return exc.with_traceback(None)


def _current_fiber():
    try:
        return loom.current_fiber()
    except loom.LoomError:
        return None                   # called from plain code (shutdown after the loop)
