"""Bidirectional prediction streams: one reply per request message, in order, each answered or refused alone.

A stream's requests are read ahead on a thread of its own into a bounded buffer, so that while the model
predicts one group of messages the next ones arrive; each group is every message waiting (up to
``max_group``), validated one by one and predicted in one call (``ModelEndpoint._run_each``). The buffer's
bound is the flow control: a client that stops reading replies fills it, and then the server stops reading
requests, which gRPC's own flow control turns into back-pressure on the client.

A message that cannot be answered gets a reply carrying a ``MessageError`` (the status a unary call would have
ended with, mapped by ``server.grpc_errors``) and the stream goes on. Errors of the stream itself (the cap on
concurrent streams, a client that cancels) end it; ``server.interceptors`` maps and counts them.
"""

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

import grpc

from protos.prediction.v1 import model_pb2
from server.domain import FeatureBatch, RequestContext
from server.errors import InvalidInputError
from server.grpc_errors import public_status
from server.interceptors import MalformedMessage

Request = TypeVar("Request")
Result = TypeVar("Result")
_END = object()


class ReadAhead(Generic[Request]):
    """Reads a stream's requests on its own thread into a buffer of at most ``limit`` messages."""

    def __init__(self, requests: Iterator[Request], limit: int) -> None:
        self._requests = requests
        self._limit = limit
        self._buffer: deque[object] = deque()
        self._changed = threading.Condition()
        self._stopped = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="stream-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for request in self._requests:
                with self._changed:
                    while len(self._buffer) >= self._limit and not self._stopped:
                        self._changed.wait()
                    if self._stopped:
                        return
                    self._buffer.append(request)
                    self._changed.notify_all()
        except Exception as exc:
            # The client cancelled, or the call ended under us: the reader only reports it.
            self._failure = exc
        finally:
            with self._changed:
                self._buffer.append(_END)
                self._changed.notify_all()

    def groups(self, most: int) -> Iterator[list[Request]]:
        """Every message waiting, up to ``most`` at a time, blocking for at least one; ends with the stream."""
        while True:
            with self._changed:
                while not self._buffer:
                    self._changed.wait()
                group: list[Request] = []
                ended = False
                while self._buffer and len(group) < most:
                    item = self._buffer.popleft()
                    if item is _END:
                        ended = True
                        break
                    group.append(item)  # type: ignore[arg-type]
                self._changed.notify_all()
            if group:
                yield group
            if ended:
                # gRPC's request iterator raises RpcError when the call ended under it (the client cancelled, or
                # its connection went away): there is nobody left to answer, so the stream just ends.
                if self._failure is not None and not isinstance(self._failure, grpc.RpcError):
                    raise self._failure
                return

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify_all()


def message_error(error: BaseException, method: str, request_id: str) -> model_pb2.MessageError:
    """The per-message form of the status ``error`` would have ended a unary call with."""
    code, message = public_status(error, method, request_id)
    violations = error.violations if isinstance(error, InvalidInputError) else ()
    return model_pb2.MessageError(
        code=code.value[0],
        status=code.name,
        message=message,
        field_violations=[model_pb2.FieldViolation(field=v.field, description=v.description) for v in violations],
    )


class StreamAnswerer(Generic[Request, Result]):
    """Drives one service's stream RPC: read ahead, group, predict each group, reply in order."""

    def __init__(
        self,
        *,
        to_batch: Callable[[Request], FeatureBatch],
        answer_each: Callable[[Sequence[FeatureBatch], RequestContext], list[Result | Exception]],
        reply: Callable[[int, Result], Any],
        error_reply: Callable[[int, model_pb2.MessageError], Any],
        method: str,
        max_group: int,
        read_ahead: int,
    ) -> None:
        self._method = method
        self._to_batch = to_batch
        self._answer_each = answer_each
        self._reply = reply
        self._error_reply = error_reply
        self._max_group = max_group
        self._read_ahead = read_ahead

    def serve(self, requests: Iterator[Request], context: RequestContext) -> Iterator[Any]:
        reader: ReadAhead[Request] = ReadAhead(requests, self._read_ahead)
        sequence = 0
        try:
            for group in reader.groups(self._max_group):
                parsed: list[FeatureBatch] = []
                malformed: dict[int, MalformedMessage] = {}
                for position, request in enumerate(group):
                    if isinstance(request, MalformedMessage):
                        malformed[position] = request
                    else:
                        parsed.append(self._to_batch(request))
                answers = iter(self._answer_each(parsed, context) if parsed else [])
                for position in range(len(group)):
                    bad = malformed.get(position)
                    result = bad.error if bad is not None else next(answers)
                    if isinstance(result, BaseException):
                        yield self._error_reply(sequence, message_error(result, self._method, context.request_id))
                    else:
                        yield self._reply(sequence, result)
                    sequence += 1
        finally:
            reader.stop()
