"""Logging of the server process: records are queued and written by a background thread.

The request path only builds a record and puts it on a queue; formatting and writing to stderr
happen on the listener thread, so a slow terminal or log shipper never slows an RPC down.
"""

import logging
import logging.handlers
import queue

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """Enqueues records unformatted, so that the listener thread formats them, not the RPC thread.

    The standard ``QueueHandler.prepare`` formats the message (and any traceback) in the caller, so that
    records can cross process boundaries; this queue never leaves the process.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure_logging(level: str) -> logging.handlers.QueueListener:
    """Route every record through a queue to stderr; the caller stops the returned listener at exit."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    output = logging.StreamHandler()
    output.setFormatter(logging.Formatter(LOG_FORMAT))
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    root = logging.getLogger()
    root.handlers[:] = [DeferredQueueHandler(records)]
    root.setLevel(level)
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    listener.start()
    return listener
