"""A real Prometheus on a loopback port and a temporary directory, configured from the committed prometheus.yml.

``prometheus_config`` keeps the committed file's jobs, metrics paths and rule files and changes only what a local
run must: each job's target address and the intervals. ``running_prometheus`` starts ``prometheus`` with it on a
free port (Prometheus cannot bind port 0 and report it, so a free port is picked and the start retried when another
process took it first), waits until it is ready, and always stops it. ``PrometheusClient`` is the HTTP API.
"""

import contextlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]

from monitoring.promql import ALERTS_FILE, PROMETHEUS_DIR

CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
SELF_JOB = "prometheus"
ADDRESS_IN_USE = "address already in use"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or answered a query with an error."""


def prometheus_config(addresses: Mapping[str, str], interval: str, *, committed: Path = CONFIG_FILE) -> dict[str, Any]:
    """The committed configuration with each job scraping ``addresses[job]`` every ``interval``.

    Every job of the file needs an address, so a job added there cannot go untested.
    """
    config: dict[str, Any] = yaml.safe_load(committed.read_text(encoding="utf-8"))
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(addresses):
        raise ValueError(f"addresses for {sorted(addresses)}, but the configuration has the jobs {sorted(jobs)}")
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [addresses[job["job_name"]]]}]
    return config


def free_port() -> int:
    """A port nothing listens on right now (another process may still take it before Prometheus does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Sample:
    labels: dict[str, str]
    values: list[tuple[float, float]]
    """(unix time, value): one pair for an instant query."""


class PrometheusClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def _get(self, path: str, params: Mapping[str, str | float] | None = None) -> Any:
        response = self._http.get(path, params=params)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [Sample({}, [(float(data["result"][0]), float(data["result"][1]))])]
        return [Sample(each["metric"], [(float(each["value"][0]), float(each["value"][1]))]) for each in data["result"]]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[Sample]:
        data = self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step})
        return [
            Sample(each["metric"], [(float(at), float(value)) for at, value in each["values"]])
            for each in data["result"]
        ]

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self._get("/api/v1/targets")["activeTargets"]
        return active

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self._get("/api/v1/rules")["groups"]
        return groups

    def metric_names(self) -> set[str]:
        return set(self._get("/api/v1/label/__name__/values"))

    def label_names(self, metric: str) -> set[str]:
        """Every label any series of ``metric`` has."""
        series = self._get("/api/v1/series", {"match[]": metric})
        return {label for each in series for label in each}

    def scrape_interval_seconds(self) -> float:
        """The global scrape interval of the running configuration."""
        config = yaml.safe_load(self._get("/api/v1/status/config")["yaml"])
        return parse_duration(config["global"]["scrape_interval"])

    def ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_scraped(self, timeout: float, *, after: float, times: int = 2) -> None:
        """Until every target is up and has been scraped ``times`` times since unix time ``after`` (rate() and
        increase() need two samples of a counter)."""
        deadline = time.monotonic() + timeout
        while True:
            targets = self.targets()
            samples = self._get("/api/v1/query", {"query": "up[5m]"})["result"]
            scrapes = {
                (each["metric"]["job"], each["metric"]["instance"]): sum(
                    1 for at, value in each["values"] if float(at) > after and value == "1"
                )
                for each in samples
            }
            wanted = {(t["labels"]["job"], t["labels"]["instance"]) for t in targets}
            if wanted and all(scrapes.get(target, 0) >= times for target in wanted):
                return
            if time.monotonic() > deadline:
                states = {t["scrapeUrl"]: (t["health"], t["lastError"]) for t in targets}
                raise PrometheusError(f"not every target was scraped {times} times within {timeout} s: {states}")
            time.sleep(0.1)

    def wait_until_rules_evaluated(self, timeout: float, *, after: float) -> list[dict[str, Any]]:
        """Until every rule group was evaluated after unix time ``after``; the groups."""
        deadline = time.monotonic() + timeout
        while True:
            groups = self.rule_groups()
            if groups and all(_unix(group["lastEvaluation"]) > after for group in groups):
                return groups
            if time.monotonic() > deadline:
                raise PrometheusError(f"rule groups not all evaluated after {after} within {timeout} s")
            time.sleep(0.1)


def _unix(rfc3339: str) -> float:
    if rfc3339.startswith("0001-"):
        return 0.0
    # Prometheus writes nanoseconds; datetime takes microseconds.
    trimmed = rfc3339.replace("Z", "+00:00")
    if "." in trimmed:
        head, tail = trimmed.split(".", 1)
        fraction, _, zone = tail.partition("+")
        trimmed = f"{head}.{fraction[:6]}+{zone}"
    return datetime.fromisoformat(trimmed).timestamp()


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as ``15s``, ``1m30s`` or ``500ms``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|[smhdwy])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def format_duration(seconds: float) -> str:
    """A duration Prometheus reads: whole milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True, slots=True)
class RunningPrometheus:
    url: str
    port: int
    directory: Path
    client: PrometheusClient


def _start(binary: str, directory: Path, port: int) -> subprocess.Popen[bytes]:
    log = (directory / "prometheus.log").open("wb")
    with log:
        return subprocess.Popen(  # noqa: S603 - a fixed command line
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def running_prometheus(
    addresses: Mapping[str, str],
    *,
    interval: str = "1s",
    binary: str = "prometheus",
    attempts: int = 5,
    ready_timeout: float = 20.0,
) -> Iterator[RunningPrometheus]:
    """Prometheus scraping ``addresses`` (job -> host:port; its own job is added) with the committed alert rules."""
    with tempfile.TemporaryDirectory(prefix="prometheus-") as name:
        directory = Path(name)
        shutil.copyfile(ALERTS_FILE, directory / ALERTS_FILE.name)
        for _attempt in range(attempts):
            port = free_port()
            config = prometheus_config({**addresses, SELF_JOB: f"127.0.0.1:{port}"}, interval)
            (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
            process = _start(binary, directory, port)
            client = PrometheusClient(f"http://127.0.0.1:{port}")
            try:
                deadline = time.monotonic() + ready_timeout
                while process.poll() is None and not client.ready():
                    if time.monotonic() > deadline:
                        raise PrometheusError(f"Prometheus not ready within {ready_timeout} s")
                    time.sleep(0.05)
                if process.poll() is None:
                    yield RunningPrometheus(client.url, port, directory, client)
                    return
                log = (directory / "prometheus.log").read_text(encoding="utf-8", errors="replace")
                if ADDRESS_IN_USE not in log:
                    raise PrometheusError(f"Prometheus exited with {process.returncode}:\n{log}")
            finally:
                client.close()
                _stop(process)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(directory / "data")
        raise PrometheusError(f"no free port for Prometheus in {attempts} attempts")
