"""Logging of the bridge process: the event loop only enqueues records; a thread writes them.

A log line per request is required (it carries the request id), and a write to a slow or blocked
stderr must never stall the event loop, so every record goes through a QueueHandler to a QueueListener.
"""

import logging
import logging.handlers
import queue
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class DeferredQueueHandler(logging.handlers.QueueHandler):
    """Enqueues records unformatted: the listener thread formats them, off the event loop.

    The standard QueueHandler formats in the caller so that records can cross process boundaries;
    this queue never leaves the process.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def start_logging(level: str) -> logging.handlers.QueueListener:
    """Route every log record through a queue to stderr; stop the returned listener at exit to flush it."""
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(logging.Formatter(FORMAT))
    listener = logging.handlers.QueueListener(records, output, respect_handler_level=True)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(DeferredQueueHandler(records))
    root.setLevel(level)
    listener.start()
    return listener
