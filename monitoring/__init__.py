"""Monitoring of the prediction service: Prometheus configuration and alerts, Grafana dashboards, and the code that
checks them against a real Prometheus and renders the dashboards (``promql``, ``prometheus_process``, ``demo``).
"""
