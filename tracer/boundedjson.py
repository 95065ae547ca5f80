"""Strict, bounded JSON for records read from a file someone may send: integers of at
most MAX_INT_DIGITS digits (u64), no NaN or Infinity, at most one container per 8 bytes,
no recursion past Python's limit, and valid Unicode (lone surrogates shown as \\xNN).

    obj = loads(line)        # raises Corrupt (why) or ValueError (not JSON)
"""

from __future__ import annotations

import json
import math

MAX_INT_DIGITS = 20      # u64 (inode numbers) has 20 digits; anything longer is not ours
MAX_INT = 1 << 64


class Corrupt(ValueError):
    """A JSON value outside the bounds of a recording."""


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_INT_DIGITS:
        raise Corrupt("an integer too long")
    v = int(s)
    if not -MAX_INT < v < MAX_INT:
        raise Corrupt("an integer out of range")
    return v


def _parse_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise Corrupt("a number out of range")
    return v


def _parse_constant(s: str):
    raise Corrupt(f"{s} is not a number")


DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                            parse_constant=_parse_constant)


def loads(raw: bytes):
    """One record, bounded. Raises Corrupt (why) or ValueError (not JSON)."""
    # Memory: a record may hold at most one container per 8 bytes ("[[],[],...]" would
    # cost ~70 bytes of Python objects per 3 bytes of file); the values of the whole file
    # are counted by the caller.
    containers = raw.count(b"[") + raw.count(b"{")
    if containers > len(raw) // 8 + 64:
        raise Corrupt("too many nested values")
    try:
        obj = DECODER.decode(raw.decode("utf-8"))
    except RecursionError:
        raise Corrupt("nested too deeply") from None
    if b"\\ud" in raw or b"\\uD" in raw:  # escaped surrogates: maybe lone ones
        obj = valid_unicode(obj)
    return obj


def count_values(raw: bytes) -> int:
    """An upper bound on the number of JSON values in a record."""
    return raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1


def valid_unicode(obj):
    """Names that were not UTF-8 on the traced machine arrive as lone surrogates (the
    writer's surrogateescape): shown as \\xNN from here on, so every format (pandas'
    Arrow strings, JSON, HTML) gets valid text."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            pass
        try:  # the original bytes, as the traced machine had them
            raw = obj.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # surrogates that no byte produced
            raw = obj.encode("utf-8", "surrogatepass")
        return raw.decode("utf-8", "backslashreplace")
    if isinstance(obj, dict):
        return {valid_unicode(k): valid_unicode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [valid_unicode(v) for v in obj]
    return obj
