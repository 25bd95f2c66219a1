"""``python -m benchmarks.noop_server [--workers 8]``: the floor of any unary Python gRPC service here.

A bare synchronous grpcio server (``ThreadPoolExecutor``, as our server is built) that answers every unary
method with an empty message and does nothing else: no parsing, no interceptors, no health service. Whatever
a real server costs beyond this is its own. Prints ``gRPC on port N`` and serves on 127.0.0.1 until SIGTERM.
"""

import argparse
import signal
import sys
import threading
from concurrent import futures
from types import FrameType

import grpc


def _empty_reply(_request: bytes, _context: grpc.ServicerContext) -> bytes:
    return b""


class _AnswerEverything(grpc.GenericRpcHandler):
    def service(self, handler_call_details: grpc.HandlerCallDetails) -> "grpc.RpcMethodHandler[bytes, bytes]":
        # No (de)serializers: the request and the reply stay bytes.
        return grpc.unary_unary_rpc_method_handler(_empty_reply)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.noop_server", description=__doc__)
    parser.add_argument("--workers", type=int, default=8, help="threads of the executor (8, our server's default)")
    arguments = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=arguments.workers))
    server.add_generic_rpc_handlers([_AnswerEverything()])
    port = server.add_insecure_port("127.0.0.1:0")
    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    server.start()
    print(f"gRPC on port {port}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(grace=1.0)


if __name__ == "__main__":
    main()
