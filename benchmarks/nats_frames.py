"""The NATS protocol as the benchmark speaks it: raw sockets and frame counting, a tenth of
the cost of a client library per message, so the bench takes little CPU from what it measures."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from benchmarks.transports import HOST

NATS_PORT = 4222


class NatsRefusal(Exception):
    """nats-server answered the bench's connection with -ERR."""


def connect_nats(url: str, subject: str) -> socket.socket:
    """A plain NATS connection subscribed to `subject` (the PONG to its PING follows the SUB)."""
    address = urlsplit(url)
    sock = socket.create_connection((address.hostname or HOST, address.port or NATS_PORT))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                 + f"SUB {subject} 1\r\nPING\r\n".encode())
    return sock


class NatsFrameCounter:
    """Counts `MSG` frames in a NATS server-to-client byte stream; answers the server's PINGs."""

    def __init__(self, sock: socket.socket, keep_subjects: bool = False) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.messages = 0
        self.ponged = False
        # The subjects of the MSG frames fed since the last `take_subjects()`, if kept.
        self._subjects: list[bytes] | None = [] if keep_subjects else None

    def feed(self, data: bytes) -> int:
        """Take more of the stream; returns the messages counted so far."""
        buffer = self._buffer
        buffer += data
        position = 0
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            if buffer.startswith(b"MSG ", position):
                # MSG <subject> <sid> [reply-to] <#bytes>: the payload and its CRLF follow.
                size = int(buffer[buffer.rfind(b" ", position, line_end) + 1:line_end])
                frame_end = line_end + 2 + size + 2
                if frame_end > len(buffer):
                    break
                self.messages += 1
                if self._subjects is not None:
                    self._subjects.append(bytes(buffer[position + 4:buffer.find(
                        b" ", position + 4, line_end)]))
                position = frame_end
                continue
            if buffer.startswith(b"PING", position):
                self._sock.sendall(b"PONG\r\n")
            elif buffer.startswith(b"PONG", position):
                self.ponged = True
            elif buffer.startswith(b"-ERR", position):
                refusal = bytes(buffer[position:line_end])
                raise NatsRefusal(f"NATS refused the bench's connection: {refusal!r}")
            position = line_end + 2  # INFO, +OK
        del buffer[:position]
        return self.messages

    def take_subjects(self) -> list[bytes]:
        """The subjects of the messages counted since the last call (`keep_subjects`)."""
        assert self._subjects is not None, "NatsFrameCounter(keep_subjects=True) first"
        subjects, self._subjects = self._subjects, []
        return subjects
