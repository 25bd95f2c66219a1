"""Prediction ids: UUIDv7 strings (RFC 9562), unique across processes, replicas and restarts, sortable by time.

Layout of the 128 bits, most significant first::

    unix_ts_ms (48) | version 0b0111 (4) | seq high (12) | variant 0b10 (2) | seq low (62)

``seq`` is a 74-bit counter split around the variant bits. At the first call in a new millisecond it starts at
a random value below 2**73 (from ``os.urandom``); every further id of this process in that millisecond takes the
next value (RFC 9562 section 6.2, method 2, "monotonic random"). So:

- ids from one process are strictly increasing, as 128-bit numbers and as strings (lowercase hex), across calls
  and threads, even when the wall clock steps back (the last millisecond is kept until the clock passes it);
- ids from different processes or restarts differ by their random start: two processes that make ids in the
  same millisecond collide only if their counter ranges overlap, about ``n / 2**72`` for ``n`` ids each;
- a batch of ``count`` ids is one reservation (one lock, at most one random draw) of ``count`` consecutive
  counter values, turned into strings with a few numpy operations instead of one Python formatting per id.

Ids are identifiers, not secrets: ids of one process in one millisecond are consecutive, so anything looked up
by id (the prediction log) must be behind the same authorisation as the data it returns.

A forked child starts a fresh sequence (``os.register_at_fork``); without that, a parent and a child forked in
the same millisecond would hand out the same ids.
"""

import os
import threading
import time

import numpy as np

VERSION = 7
_SEQ_BITS = 74
_SEQ_LIMIT = 1 << _SEQ_BITS
_LOW_BITS = 62
_LOW_MASK = (1 << _LOW_BITS) - 1
_VERSION_BITS = VERSION << 76
_VARIANT_BITS = 0b10 << _LOW_BITS
# A fresh start below 2**73 leaves at least 2**73 ids before the counter could overflow its millisecond.
_RANDOM_START_BYTES = 10
_RANDOM_START_SHIFT = _RANDOM_START_BYTES * 8 - (_SEQ_BITS - 1)
# Below this many ids the per-id Python formatting is cheaper than numpy's fixed cost (measured: about 24).
_VECTOR_MIN_COUNT = 24

# Two hex digits per byte value, and where the 32 hex digits sit among the 36 characters of the text form.
_HEX_PAIRS = np.frombuffer(b"".join(f"{byte:02x}".encode() for byte in range(256)), dtype=np.uint8).reshape(256, 2)
_HEX_COLUMNS = np.array([column for column in range(36) if column not in (8, 13, 18, 23)])
_DASH = ord("-")
_SEPARATOR = ord(" ")


class _Sequence:
    """The (millisecond, counter) state of this process; the lock is held for a few integer operations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._millisecond = -1
        self._counter = 0

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._millisecond = -1
        self._counter = 0

    def reserve(self, count: int) -> tuple[int, int]:
        """``count`` consecutive ids: their millisecond and the counter value of the first."""
        now = time.time_ns() // 1_000_000
        with self._lock:
            if now > self._millisecond:
                millisecond, first = now, _random_start()
            else:
                # Same millisecond, or the clock stepped back: continue after the last id handed out.
                millisecond, first = self._millisecond, self._counter + 1
            if first + count > _SEQ_LIMIT:
                # This millisecond's counter space is used up: borrow the next millisecond, as RFC 9562 allows.
                millisecond, first = millisecond + 1, _random_start()
            self._millisecond = millisecond
            self._counter = first + count - 1
        return millisecond, first


def _random_start() -> int:
    return int.from_bytes(os.urandom(_RANDOM_START_BYTES)) >> _RANDOM_START_SHIFT


_sequence = _Sequence()
os.register_at_fork(after_in_child=_sequence.reset)


def _format(millisecond: int, counter: int) -> str:
    value = (millisecond << 80) | _VERSION_BITS | ((counter >> _LOW_BITS) << 64) | _VARIANT_BITS | (counter & _LOW_MASK)
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _format_many(millisecond: int, first: int, count: int) -> list[str]:
    low = np.arange(count, dtype=np.uint64)
    low += np.uint64(first & _LOW_MASK)
    # The low 62 bits may wrap into the 12 high counter bits; the reservation guarantees those do not overflow.
    high = low >> np.uint64(_LOW_BITS)
    high += np.uint64((millisecond << 16) | (VERSION << 12) | (first >> _LOW_BITS))
    low &= np.uint64(_LOW_MASK)
    low |= np.uint64(_VARIANT_BITS)
    words = np.empty((count, 2), dtype=">u8")
    words[:, 0] = high
    words[:, 1] = low
    digits = np.take(_HEX_PAIRS, words.view(np.uint8), axis=0).reshape(count, 32)
    text = np.full((count, 37), _DASH, dtype=np.uint8)
    text[:, _HEX_COLUMNS] = digits
    text[:, 36] = _SEPARATOR
    # One decode and one split in C (split on the one separator, without the last, is the fastest form): a
    # Python slice per id would cost more than all the numpy work above.
    return text.reshape(-1)[:-1].tobytes().decode("ascii").split(" ")


def new_prediction_id() -> str:
    """One new id, e.g. ``"0192f3c4-5b6a-7d2e-8f01-23456789abcd"``."""
    millisecond, counter = _sequence.reserve(1)
    return _format(millisecond, counter)


def new_prediction_ids(count: int) -> list[str]:
    """``count`` new ids in increasing order (one per row of a batch), made in one reservation."""
    if count <= 0:
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        return []
    millisecond, first = _sequence.reserve(count)
    if count < _VECTOR_MIN_COUNT:
        return [_format(millisecond, first + offset) for offset in range(count)]
    return _format_many(millisecond, first, count)


def prediction_id_millisecond(prediction_id: str) -> int:
    """The unix time in milliseconds an id was made at (its first 48 bits)."""
    return int(prediction_id[:8] + prediction_id[9:13], 16)
