"""A keep-alive HTTP/1.1 client with almost no overhead of its own, so that it measures the server.

It sends one prebuilt request over and over and reads each answer by its Content-Length: no parsing,
no allocation beyond the bytes read. httpx costs about 0.7 ms a call here, more than the bridge hop.
"""

import asyncio
import re
import socket

CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def http_request(path: str, body: bytes | None) -> bytes:
    """The bytes of ``GET path``, or of ``POST path`` with a JSON ``body``."""
    method = "GET" if body is None else "POST"
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\n"
    if body is None:
        return (head + "\r\n").encode()
    return (head + f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body


class AsyncHttp:
    """One connection to 127.0.0.1 that sends the same request on every ``call()``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> None:
        self.reader, self.writer, self.request = reader, writer, request

    @classmethod
    async def open(cls, port: int, request: bytes) -> "AsyncHttp":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, request)

    async def call(self) -> None:
        """Send the request and read the whole answer; RuntimeError unless it is a 200."""
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = CONTENT_LENGTH.search(head)
        if match is None:
            raise RuntimeError("response without content-length")
        body = await self.reader.readexactly(int(match.group(1)))
        if head[9:12] != b"200":
            raise RuntimeError(f"HTTP {head[9:12].decode()}: {body[:300]!r}")

    def close(self) -> None:
        self.writer.close()
