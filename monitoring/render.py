"""Every Grafana dashboard of monitoring/grafana/dashboards as a PNG, each panel drawn from its own PromQL.

There is no Grafana server here, so each panel's targets are sent to a real Prometheus's ``query_range`` API, with
the dashboard's variables at their "All" value and ``$__rate_interval`` as Grafana computes it (the step plus one
scrape interval, and at least four scrape intervals); one PNG per dashboard, a grid of its panels (matplotlib, Agg).
``serve_and_render`` first makes the data: the demo stack (``monitoring.demo``) scraped by a real Prometheus every
second, with traffic for a while (in its second half the housing inputs drift and the labels get worse, so the drift
and live-quality panels move). The command line is ``scripts/render_dashboards.py``.
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import matplotlib as mpl

mpl.use("Agg")  # before pyplot: no display here
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter

from monitoring.prometheus_process import PrometheusClient, format_duration
from monitoring.promql import dashboard_files, load_dashboard, panels, substitute, variables

DEFAULT_OUT = Path("docs/dashboards")
MAX_POINTS = 300
LEGEND_ENTRIES = 8


@dataclass(frozen=True, slots=True)
class Rendered:
    dashboard: str
    path: Path
    panels: int
    panels_with_data: int


def rate_interval(step: float, scrape: float) -> str:
    """Grafana's $__rate_interval: max(step + scrape interval, 4 x scrape interval)."""
    return format_duration(max(step + scrape, 4 * scrape))


def legend(template: str, labels: dict[str, str]) -> str:
    text = template or ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
    for key, value in labels.items():
        text = text.replace(f"{{{{{key}}}}}", value)
    # Labels the series does not have render as nothing, as in Grafana.
    while "{{" in text and "}}" in text.split("{{", 1)[1]:
        head, rest = text.split("{{", 1)
        text = head + rest.split("}}", 1)[1]
    return text.strip() or "value"


_SCALE = {"percentunit": (100.0, "%"), "percent": (1.0, "%"), "reqps": (1.0, "req/s")}


def _scale(unit: str, series: list[tuple[str, list[tuple[float, float]]]]) -> tuple[float, str]:
    if unit != "s":
        return _SCALE.get(unit, (1.0, ""))
    largest = max((abs(value) for _, values in series for _, value in values if math.isfinite(value)), default=0.0)
    return (1000.0, "ms") if largest < 1.0 else (1.0, "s")


def _plot_panel(axes: Axes, panel: dict[str, Any], series: list[tuple[str, list[tuple[float, float]]]]) -> bool:
    scale, unit = _scale(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", ""), series)
    axes.set_title(panel["title"], fontsize=9, loc="left")
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    plotted = 0
    for name, values in series:
        if not values:
            continue
        times = np.array([at for at, _ in values])
        numbers = np.array([value for _, value in values]) * scale
        if not np.isfinite(numbers).any():
            continue
        axes.plot(times, numbers, linewidth=1.2, label=name[:60] if plotted < LEGEND_ENTRIES else None)
        plotted += 1
    if not plotted:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes, color="grey")
        axes.set_xticks([])
        return False
    axes.xaxis.set_major_formatter(FuncFormatter(lambda at, _pos: time.strftime("%H:%M:%S", time.gmtime(at))))
    if unit:
        axes.set_ylabel(unit, fontsize=7)
    if plotted > LEGEND_ENTRIES:
        axes.plot([], [], " ", label=f"... and {plotted - LEGEND_ENTRIES} more")
    axes.legend(fontsize=6, loc="upper left", framealpha=0.6)
    return True


def render_dashboard(
    client: PrometheusClient, path: Path, out: Path, *, start: float, end: float, step: float, scrape: float
) -> Rendered:
    dashboard = load_dashboard(path)
    values = variables(dashboard)
    shown = panels(dashboard)
    columns = 2
    rows = math.ceil(len(shown) / columns)
    figure, grid = plt.subplots(rows, columns, figsize=(16, 3.2 * rows + 0.6), squeeze=False)
    with_data = 0
    for index, panel in enumerate(shown):
        series = []
        for target in panel["targets"]:
            expr = substitute(target["expr"], values, rate_interval(step, scrape))
            for sample in client.query_range(expr, start, end, step):
                series.append((legend(target.get("legendFormat", ""), sample.labels), sample.values))
        with_data += _plot_panel(grid[index // columns][index % columns], panel, series)
    for index in range(len(shown), rows * columns):
        grid[index // columns][index % columns].set_visible(False)
    window = (
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(start))} to {time.strftime('%H:%M:%S', time.gmtime(end))} UTC"
    )
    figure.suptitle(f"{dashboard['title']}  ({window}, step {step:g} s)", fontsize=12, x=0.01, ha="left")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.2 * rows + 0.6)))
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{path.stem}.png"
    figure.savefig(target, dpi=72)
    plt.close(figure)
    return Rendered(dashboard["title"], target, len(shown), with_data)


def render_all(
    client: PrometheusClient,
    out: Path,
    start: float,
    end: float,
    *,
    step: float | None = None,
    dashboards: list[Path] | None = None,
) -> list[Rendered]:
    """Every dashboard (or those of ``dashboards``) over [start, end], one point every ``step`` seconds (default:
    at most MAX_POINTS points, no closer than the scrape interval)."""
    scrape = client.scrape_interval_seconds()
    step = step or max(scrape, math.ceil((end - start) / MAX_POINTS))
    return [
        render_dashboard(client, path, out, start=start, end=end, step=step, scrape=scrape)
        for path in dashboards or dashboard_files()
    ]


def serve_and_render(seconds: float, out: Path) -> list[Rendered]:
    """Start the demo stack and a Prometheus, drive traffic for ``seconds``, render that window into ``out``."""
    # Imported here: only --serve needs the server, the bridge and the models.
    from monitoring.demo import demo_stack, drive_grpc, drive_traffic  # noqa: PLC0415
    from monitoring.prometheus_process import running_prometheus  # noqa: PLC0415

    rng = np.random.default_rng(11)
    with (
        demo_stack() as stack,
        running_prometheus({"server": stack.metrics_address, "bridge": stack.bridge_address}) as prometheus,
        httpx.Client(base_url=stack.bridge_url, timeout=10) as bridge,
    ):
        started = time.time()
        prometheus.client.wait_until_scraped(30, after=started, times=1)
        began = time.time()
        while (elapsed := time.time() - began) < seconds:
            late = max(0.0, elapsed / seconds - 0.5) * 2  # 0 in the first half, then up to 1
            drive_traffic(
                bridge,
                rng,
                singles=int(rng.integers(4, 16)),
                batch_rows=int(rng.integers(4, 64)),
                income_shift=3.0 * late,
                label_noise=0.3 + 0.7 * late,
                wrong_species=0.05 + 0.3 * late,
            )
            if rng.random() < 0.3:
                drive_grpc(f"127.0.0.1:{stack.server.port}", rng)
            time.sleep(float(rng.uniform(0.05, 0.4)))
        ended = time.time()
        prometheus.client.wait_until_scraped(30, after=ended)
        return render_all(prometheus.client, out, started, time.time())
