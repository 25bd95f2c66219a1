"""Render every Grafana dashboard (monitoring/grafana/dashboards) to a PNG, each panel from its own PromQL, through a
real Prometheus's query_range API (monitoring.render). Run from the repository root:

    python -m scripts.render_dashboards --prometheus http://localhost:9090 --out docs/dashboards --minutes 30
    python -m scripts.render_dashboards --serve 60 --out docs/dashboards

``--serve SECONDS`` first starts the real gRPC server and REST bridge (monitoring.demo: small in-memory models) and
a real Prometheus scraping them every second, drives traffic through the bridge for SECONDS, then renders that
window.
"""

import argparse
import sys
import time
from pathlib import Path

from monitoring.prometheus_process import PrometheusClient
from monitoring.render import DEFAULT_OUT, render_all, serve_and_render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="URL of the Prometheus to query, e.g. http://localhost:9090")
    source.add_argument("--serve", type=float, metavar="SECONDS", help="start the demo stack, drive traffic, render")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for the PNGs (default {DEFAULT_OUT})")
    parser.add_argument("--minutes", type=float, default=15.0, help="with --prometheus: the last this many minutes")
    parser.add_argument("--step", type=float, help="seconds between points (default: from the window)")
    arguments = parser.parse_args(argv)
    if arguments.serve is not None:
        rendered = serve_and_render(arguments.serve, arguments.out)
    else:
        client = PrometheusClient(arguments.prometheus)
        try:
            end = time.time()
            rendered = render_all(client, arguments.out, end - 60 * arguments.minutes, end, step=arguments.step)
        finally:
            client.close()
    for each in rendered:
        print(f"{each.path}: {each.dashboard}, {each.panels_with_data} of {each.panels} panels with data")
    return 0


if __name__ == "__main__":
    sys.exit(main())
