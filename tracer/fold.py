"""Long tables on one screen: the rows that matter, then one "other (N rows)" line.

A person reading `footprint report` or `compare` wants the few rows that hold the
memory, not forty rows of 0.0. The folded rows are summed into one line, so every
total under the table stays exact; `--all` prints every row.

Use:  shown, rest = fold(rows, value=lambda r: r["delta_mib"])
      if rest: print(other_label(rest), sum(...))
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
TOP = 15          # rows kept at most
MIN_MIB = 1.0     # rows under this (in absolute value) are folded


def fold(rows: Sequence[T], value: Callable[[T], float], top: int = TOP,
         min_abs: float = MIN_MIB) -> tuple[list[T], list[T]]:
    """(kept, folded): the rows worth a line of their own — at most `top`, each at least
    `min_abs` in absolute value — and the others. Order is kept. A single folded row is
    shown instead: "other (1 row)" would hide a name to save nothing."""
    kept = [r for r in rows if abs(value(r)) >= min_abs][:top]
    ids = {id(r) for r in kept}
    rest = [r for r in rows if id(r) not in ids]
    if len(rest) == 1:
        kept, rest = list(rows), []
    return kept, rest


def other_label(rest: Sequence) -> str:
    """The label of the line that sums the folded rows: "other (N rows)"."""
    n = len(rest)
    return f"other ({n} row{'s' if n != 1 else ''})"
