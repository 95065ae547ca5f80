"""Hostile names from a recording (another machine's file names, dm names, phases) are
inert in every format: text (no escape sequence reaches the terminal), CSV (quoted, one
record per row), JSON (valid, round-trips). HTML is covered in test_html.py (Chromium)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

import synthetic_live as live
from tracer.safe import inert

NAMES = {
    "script": "<script>alert(1)</script>",
    "quotes": "a \"quoted\", 'name'",
    "newline": "line1\nline2\r\nline3",
    "escape": "\x1b[31mRED\x1b[0m\x1b]0;pwned\x07",
    "not-utf8": b"caf\xe9-\xff.img".decode("utf-8", "surrogateescape"),
    "bidi": "evil\u202egnp.exe",
}


def footprint(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True)


@pytest.fixture(params=sorted(NAMES), scope="module")
def hostile(request, tmp_path_factory):
    name = NAMES[request.param]
    path = tmp_path_factory.mktemp("hostile") / "live.jsonl"
    live.write_live(path, hostile=name)
    return name, path


def test_text_is_inert(hostile):
    name, path = hostile
    for by in ("layer", "file"):
        p = footprint("report", str(path), "--by", by)
        assert p.returncode == 0, p.stderr
        out = p.stdout.decode("utf-8")  # valid UTF-8, whatever the input bytes were
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out
        assert "\u202e" not in out
        # one logical row per line: a newline in a name never starts a new row
        for line in out.splitlines():
            assert not line.startswith(("line2", "line3"))


def test_csv_quotes_names(hostile):
    name, path = hostile
    p = footprint("report", str(path), "--csv", "--by", "file")
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode("utf-8")
    assert "\x1b" not in out and "\u202e" not in out
    rows = list(csv.DictReader(io.StringIO(out)))
    assert inert(name) in [r["path"] for r in rows]  # one field, however many commas/quotes


def test_json_is_valid_and_round_trips(hostile):
    name, path = hostile
    p = footprint("report", str(path), "--json")
    assert p.returncode == 0, p.stderr
    obj = json.loads(p.stdout)  # ASCII-only JSON: valid whatever the bytes
    assert p.stdout.isascii()
    # exact, except bytes that were not UTF-8: those read as \\xNN text
    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert shown in [f["path"] for f in obj["files"]]
    assert shown in [ph["name"] for ph in obj["phases"]]
