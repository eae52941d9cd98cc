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
