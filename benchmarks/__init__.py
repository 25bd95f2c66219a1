"""Benchmarks that start real processes and measure them from outside."""
