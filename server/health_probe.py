"""``python -m server.health_probe --address host:port [--service NAME] [--timeout S]``: one health check.

Calls ``grpc.health.v1.Health/Check`` once and exits 0 only when the answer is ``SERVING``; otherwise it exits
1 (the server answered another status, or an error) or 2 (a bad command line), with one line on stderr. The
container's ``HEALTHCHECK`` and compose's healthcheck run it, so it imports only grpc and the health stubs:
nothing of the server, no settings, no environment.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str, timeout: float) -> str | None:
    """None when ``service`` at ``address`` is SERVING; otherwise why not, in one line."""
    # No retries and no waiting for a connection beyond the deadline: the caller decides how often to ask.
    with grpc.insecure_channel(address, options=(("grpc.enable_retries", 0),)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            # Every error a unary call raises is also a grpc.Call, which carries the code and details.
            call: grpc.Call = exc  # type: ignore[assignment]
            return f"{call.code().name}: {call.details()}"
    if reply.status != SERVING:
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return None


def _positive_seconds(text: str) -> float:
    seconds = float(text)
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.health_probe", description="One gRPC health check.")
    parser.add_argument("--address", required=True, help="the server's host:port, e.g. localhost:50051")
    parser.add_argument(
        "--service", default="", help="the service to check; empty (the default) is the whole server's status"
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=3.0, help="seconds to wait for the answer (%(default)s)"
    )
    args = parser.parse_args(argv)
    problem = check(args.address, args.service, args.timeout)
    if problem is not None:
        shown = args.service or "(overall)"
        sys.stderr.write(f"health check of {shown} at {args.address} failed: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
