"""Names from a recording are data from another machine: make them inert for each output.

One place for it, so that every text and CSV writer does the same:
- text (`inert`): control characters, C1 codes and bidi overrides shown escaped (no escape sequence
  reaches a terminal, no name starts a line of its own), bytes that were not UTF-8 as \\xNN;
- CSV: the same, and a cell a spreadsheet would evaluate as a formula (one starting with
  ``=``, ``+``, ``-``, ``@``, tab or carriage return) is prefixed with ``'``, as OWASP's
  "CSV injection" guidance recommends. Numbers stay numbers.
HTML escapes on top of `inert` (`html_text`); JSON is strict and ASCII-only
(tracer/report.py `dumps_json`).
"""

from __future__ import annotations

import re

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def inert(value) -> str:
    """`value` as text safe to print on a terminal ("-" for None)."""
    if value is None:
        return "-"
    s = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return _UNPRINTABLE.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), s)


def csv_cell(value):
    """A CSV cell: strings made inert and never read as a formula; other values as they are."""
    if not isinstance(value, str):
        return value
    s = inert(value)
    return "'" + s if s.startswith(_FORMULA) else s


def to_csv(df) -> str:
    """`df` (a pandas DataFrame) as CSV text with every string cell and every column name
    made inert."""
    import pandas as pd  # here only: inert() serves the recorder and the error path too
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].map(csv_cell)
    out.columns = [csv_cell(str(c)) for c in out.columns]
    return out.to_csv(index=False)


def html_text(text) -> str:
    """A name from a recording, safe as HTML text or attribute value: made inert, then
    escaped (quotes too)."""
    import html

    return html.escape(inert(text), quote=True)
