"""C11's second measure at its source: `TcpStream.unread_bytes()` reports the kernel's receive
queue of a real socket (FIONREAD), byte for byte, and 0 once read or closed."""

import socket

from observer.net.tcp import TcpStream

PAYLOAD_BYTES = 3000
READ_FIRST_BYTES = 1200


def test_unread_bytes_follows_the_kernel_receive_queue():
    ours, theirs = socket.socketpair()
    stream = TcpStream(ours, peer="socketpair")
    try:
        assert stream.unread_bytes() == 0
        theirs.sendall(b"x" * PAYLOAD_BYTES)
        assert stream.unread_bytes() == PAYLOAD_BYTES     # a socketpair delivers at once
        assert len(ours.recv(READ_FIRST_BYTES)) == READ_FIRST_BYTES
        assert stream.unread_bytes() == PAYLOAD_BYTES - READ_FIRST_BYTES
        rest = PAYLOAD_BYTES - READ_FIRST_BYTES
        got = 0
        while got < rest:
            got += len(ours.recv(rest - got))
        assert stream.unread_bytes() == 0                  # caught up
        theirs.sendall(b"y" * 10)
        stream.close()
        assert stream.unread_bytes() == 0                  # closed: nothing waits for us
    finally:
        ours.close()
        theirs.close()
