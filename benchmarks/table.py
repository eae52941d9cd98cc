"""The two-column table every benchmark prints."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(rows: Sequence[tuple[str, str]], *, value_width: int = 40) -> None:
    """``measure  value`` rows under a ruled header, the labels padded to the longest."""
    width = max(len(label) for label, _ in rows)
    print(f"{'measure':<{width}}  value")
    print(f"{'-' * width}  {'-' * value_width}")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def machine_speed() -> str:
    """How fast this machine runs plain Python now, and how busy it is: figures from different sessions
    (machines, neighbours) are comparable only through this, same code or not. A 2,000,000-iteration loop,
    best of three, in ns per iteration, and the load average."""
    import os
    import time

    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = min(best, time.perf_counter() - started)
    one, five, _fifteen = os.getloadavg()
    return f"{best / 2_000_000 * 1e9:.0f} ns per loop iteration (best of 3), load average {one:.2f} / {five:.2f}"
