"""A TCP gate between a client and a real server, to take the server away and bring it back while both run.

Closed, the gate accepts each connection and resets it at once (what a client sees of a host whose service is
down), and cuts every connection it was forwarding, so that no pooled keep-alive connection outlives the outage.
Open, it forwards bytes both ways. It listens on port 0 and reports the port it got.
"""

import socket
import struct
import threading
import time
from types import TracebackType

CHUNK_BYTES = 65_536


class TcpGate:
    def __init__(self, target_port: int, *, target_host: str = "127.0.0.1", open_at_start: bool = False) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open = open_at_start
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        # When each refused connection arrived (monotonic seconds): how often a client retried during an outage.
        self.refused_at: list[float] = []
        self._accepting = threading.Thread(target=self._accept, name=f"tcp-gate-{self.port}", daemon=True)
        self._accepting.start()

    def open(self) -> None:
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Refuse new connections and cut the ones in progress."""
        with self._lock:
            self._open = False
            live, self._live = self._live, set()
        for connection in live:
            _reset(connection)

    def stop(self) -> None:
        self.close()
        self._listener.close()
        self._accepting.join(timeout=5)

    def __enter__(self) -> "TcpGate":
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed: the gate is stopped
                return
            with self._lock:
                admitted = self._open
                if not admitted:
                    self.refused_at.append(time.monotonic())
            if not admitted:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._live.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(CHUNK_BYTES):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._live.discard(source)
                self._live.discard(sink)
            for end in (source, sink):
                _reset(end)


def _reset(connection: socket.socket) -> None:
    """Close with a TCP reset rather than an orderly FIN: the peer's next read or write fails at once.

    The shutdown comes first because it wakes a thread of the gate blocked reading this socket; close alone
    would not."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
