"""One real stack for the monitoring tests: the gRPC server and the REST bridge with a little traffic, scraped by a
real Prometheus every second, with the committed alert rules loaded."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from monitoring.demo import DemoStack, demo_stack, drive_grpc, drive_traffic
from monitoring.prometheus_process import PrometheusClient, running_prometheus

from ..prerequisites import PROMETHEUS, PROMTOOL

SCRAPE_SECONDS = 1.0


@dataclass(frozen=True)
class ObservedStack:
    stack: DemoStack
    prometheus: PrometheusClient
    traffic_ended: float
    """Unix time the traffic ended; every target was scraped twice after it, and every rule evaluated after that."""


@pytest.fixture(scope="session")
def promtool() -> Path:
    return PROMTOOL.require()


@pytest.fixture(scope="session")
def observed() -> Iterator[ObservedStack]:
    binary = PROMETHEUS.require()
    with (
        demo_stack() as stack,
        running_prometheus(
            {"server": stack.metrics_address, "bridge": stack.bridge_address},
            interval=f"{SCRAPE_SECONDS:g}s",
            binary=str(binary),
        ) as prometheus,
    ):
        rng = np.random.default_rng(7)
        with httpx.Client(base_url=stack.bridge_url, timeout=10) as client:
            drive_traffic(client, rng, singles=12, batch_rows=16)
        drive_grpc(f"127.0.0.1:{stack.server.port}", rng)
        ended = time.time()
        # Two scrapes after the traffic: every counter it moved has the two samples rate() and increase() need.
        prometheus.client.wait_until_scraped(30, after=ended)
        # A group evaluates at its aligned evaluation timestamp, up to one interval before the evaluation
        # starts (lastEvaluation): only one that starts an interval from now reads every sample scraped until now.
        # Waiting for "after now" alone let a loaded machine see the latency-SLO rules evaluated on one sample.
        prometheus.client.wait_until_rules_evaluated(10, after=time.time() + SCRAPE_SECONDS)
        yield ObservedStack(stack, prometheus.client, ended)
