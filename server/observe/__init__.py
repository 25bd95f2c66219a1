"""Observers of the request path: sinks that take events through a non-blocking ``offer`` and do their work on
their own threads, so a response never waits on them (``prediction_log``: every prediction into SQLite).
"""
