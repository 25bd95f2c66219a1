"""The dashboard renderer (monitoring.render, behind scripts/render_dashboards.py) against the monitoring tests'
real Prometheus: a PNG of a dashboard's panels, with a curve in every panel whose queries have data. One dashboard,
the smallest: matplotlib draws about 0.1-0.3 s per panel on this machine, and every dashboard goes through the same
code (``--serve`` renders them all)."""

import math
import time
from pathlib import Path

from matplotlib import image

from monitoring.promql import DASHBOARDS_DIR, load_dashboard, panels, substitute, variables
from monitoring.render import rate_interval, render_all

from .conftest import SCRAPE_SECONDS, ObservedStack


def _panels_with_finite_data(observed: ObservedStack, path: Path, start: float, end: float) -> int:
    dashboard = load_dashboard(path)
    values = variables(dashboard)
    found = 0
    for panel in panels(dashboard):
        exprs = [substitute(t["expr"], values, rate_interval(1.0, SCRAPE_SECONDS)) for t in panel["targets"]]
        samples = [sample for expr in exprs for sample in observed.prometheus.query_range(expr, start, end, 1.0)]
        found += any(math.isfinite(value) for sample in samples for _, value in sample.values)
    return found


def test_a_dashboard_renders_to_a_png_of_its_panels_with_a_curve_wherever_there_is_data(
    observed: ObservedStack, tmp_path: Path
):
    end = time.time()
    start = observed.traffic_ended - 10
    chosen = [DASHBOARDS_DIR / "rest-bridge.json"]
    rendered = render_all(observed.prometheus, tmp_path, start, end, step=1.0, dashboards=chosen)
    assert [each.path.name for each in rendered] == ["rest-bridge.png"]
    for each, path in zip(rendered, chosen, strict=True):
        assert each.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(each.path)
        rows = math.ceil(len(panels(load_dashboard(path))) / 2)
        assert pixels.shape[0] == round((3.2 * rows + 0.6) * 72), each.path
        assert each.panels == len(panels(load_dashboard(path)))
        assert each.panels_with_data > 0
        assert each.panels_with_data == _panels_with_finite_data(observed, path, start, end), each.dashboard
