"""``python -m server.health_probe --address host:port [--service NAME] [--timeout S] [--tls-ca FILE ...]``:
one health check.

Calls ``grpc.health.v1.Health/Check`` once and exits 0 only when the answer is ``SERVING``; otherwise it exits
1 (the server answered another status, or an error) or 2 (a bad command line), with one line on stderr. The
container's ``HEALTHCHECK`` and compose's healthcheck run it, so it imports only grpc and the health stubs:
nothing of the server, no settings, no environment. With ``--tls-ca`` (and ``--tls-cert``/``--tls-key`` for a
server that requires client certificates) it speaks TLS, for a server whose port serves TLS only.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class ProbeTls:
    """The CA the server's certificate must chain to, and the probe's own certificate for mTLS (both or neither)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def channel(self, address: str, options: list[tuple[str, object]]) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=None if self.key_file is None else self.key_file.read_bytes(),
            certificate_chain=None if self.cert_file is None else self.cert_file.read_bytes(),
        )
        if self.server_name is not None:
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.secure_channel(address, credentials, options=options)


def check(address: str, service: str, timeout: float, tls: ProbeTls | None = None) -> str | None:
    """None when ``service`` at ``address`` is SERVING; otherwise why not, in one line."""
    # No retries and no waiting for a connection beyond the deadline: the caller decides how often to ask.
    options: list[tuple[str, object]] = [("grpc.enable_retries", 0)]
    opened = grpc.insecure_channel(address, options=options) if tls is None else tls.channel(address, options)
    with opened as channel:
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
    parser.add_argument("--tls-ca", type=Path, help="speak TLS, trusting this PEM CA file (else plaintext)")
    parser.add_argument("--tls-cert", type=Path, help="the probe's PEM client certificate, for mTLS (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="its PEM private key")
    parser.add_argument("--tls-server-name", help="check the server's certificate against this name")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_ca is None and (args.tls_cert is not None or args.tls_server_name is not None):
        parser.error("--tls-cert, --tls-key and --tls-server-name need --tls-ca")
    tls = None if args.tls_ca is None else ProbeTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    try:
        problem = check(args.address, args.service, args.timeout, tls)
    except OSError as exc:
        sys.stderr.write(f"health check at {args.address} failed: cannot read a TLS file: {exc}\n")
        return 1
    if problem is not None:
        shown = args.service or "(overall)"
        sys.stderr.write(f"health check of {shown} at {args.address} failed: {problem}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
