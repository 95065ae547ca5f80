"""Crafted recordings against every reading command: exit 0 or 2 with one line, never a
traceback; strict JSON; inert text and CSV; bounded memory; no blocking on a FIFO.

A recording is a file someone may send you, and footprint runs as root. The fuzzer
mutates a real recording the way an attacker would (numbers out of range, NaN, deep
nesting, lone surrogates, control characters, truncation, duplicated lines) and runs the
commands in-process through click, as `footprint` runs them."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import resource
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import synthetic_live as live
from tracer.cli import main

FOOTPRINT = [sys.executable, "-m", "tracer"]


def _strict(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers do."""
    def no(c):
        raise ValueError(f"non-standard JSON constant {c}")
    return json.loads(text, parse_constant=no)


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=True)


def assert_clean(result, *, json_out=False, csv_out=False):
    """Exit 0 or 2; on 2 exactly one line on stderr; no traceback anywhere."""
    assert result.exit_code in (0, 2), (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    if result.exit_code == 2:
        assert result.stderr.startswith("footprint: ") and result.stderr.count("\n") == 1, result.stderr
        return
    out = result.stdout
    if json_out:
        _strict(out)
        assert out.isascii()
    else:
        assert "\x1b" not in out and "\x07" not in out and "\r" not in out and "\u202e" not in out
    if csv_out:
        for row in csv.reader(io.StringIO(out)):
            for cell in row:
                assert not cell.startswith(("=", "+", "@", "\t", "\r")) or _number(cell), cell


def _number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-input")
    path = d / "live.jsonl"
    live.write_live(path)
    return path.read_bytes()


# --- one test per crafted input the issue names ------------------------------------------

def _mutate_line(blob: bytes, kind: str, edit) -> bytes:
    lines = blob.decode().splitlines()
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj["type"] == kind:
            lines[i] = edit(obj, line)
            break
    return ("\n".join(lines) + "\n").encode()


CRAFTED = {
    "huge meminfo": lambda b: b.replace(b'"MemTotal":400000', b'"MemTotal":1' + b"0" * 400, 1),
    "huge counter": lambda b: re.sub(rb'\[(\d+),', lambda m: b"[" + b"9" * 5000 + b",", b, count=1),
    "huge t": lambda b: b.replace(b'"t":4.0', b'"t":1e400', 1),
    "huge page_size": lambda b: b.replace(b'"page_size":4096', b'"page_size":' + str(2 ** 2000).encode(), 1),
    "NaN time": lambda b: b.replace(b'"t":4.0', b'"t":NaN', 1),
    "Infinity kB": lambda b: b.replace(b'"MemTotal":400000', b'"MemTotal":Infinity', 1),
    "deep nesting": lambda b: b + b"[" * 100_000 + b"\n",
    "negative pages": lambda b: re.sub(rb'"7:0:2":\[(\d+)', rb'"7:0:2":[-\1', b, count=1),
    "negative MemTotal": lambda b: b.replace(b'"MemTotal":400000', b'"MemTotal":-400000'),
    "version -1": lambda b: b.replace(b'"version":1', b'"version":-1', 1),
    "duplicated header": lambda b: b.splitlines(keepends=True)[0] + b,
    "kernel as a list": lambda b: re.sub(rb'"kernel":"[^"]*"', b'"kernel":["a"]', b, count=1),
    "MemFree above MemTotal": lambda b: b.replace(b'"MemFree":352000', b'"MemFree":999999999'),
    "dm device without a role": lambda b: b.replace(b',"role":"origin"', b"", 1),
    "dm device without its table": lambda b: b.replace(b'"dm":{"name"', b'"dn":{"name"', 1),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_recording_is_one_line_exit_2(tmp_path, base, name):
    blob = CRAFTED[name](base)
    assert blob != base, f"{name}: the mutation did not apply"
    path = tmp_path / "r.jsonl"
    path.write_bytes(blob)
    for args in (["report", str(path)], ["report", str(path), "--json"], ["report", str(path), "--csv"],
                 ["answer", str(path)], ["compare", str(path), str(path)], ["timeline", str(path)]):
        r = run(*args)
        assert r.exit_code == 2, (name, args, r.exit_code, r.stdout[-300:], r.stderr, r.exception)
        assert_clean(r)
        assert "corrupt" in r.stderr or "not a footprint recording" in r.stderr, r.stderr


def test_lone_surrogate_in_a_sample_key_reads_as_text(tmp_path, base):
    blob = base.replace(b'"vmalloc":{', b'"vmalloc":{"\\ud800evil\\u001b[31m":7,', 1)
    assert blob != base
    path = tmp_path / "r.jsonl"
    path.write_bytes(blob)
    for args, kw in ((["report", str(path)], {}), (["report", str(path), "--json"], {"json_out": True}),
                     (["report", str(path), "--csv", "--by", "kind"], {"csv_out": True})):
        r = run(*args)
        assert r.exit_code == 0, (args, r.stderr, r.exception)
        assert_clean(r, **kw)


def test_report_by_file_as_json(tmp_path, base):
    path = tmp_path / "r.jsonl"
    path.write_bytes(base)
    for by in ("file", "subsystem", "kind", "layer"):
        r = run("report", str(path), "--by", by, "--json")
        assert r.exit_code == 0, (by, r.stderr, r.exception)
        obj = _strict(r.stdout)
        assert obj["files"] and sum(f["resident_pages"] for f in obj["files"]) > 0


def test_end_reason_and_probe_names_are_inert(tmp_path, base):
    evil = "\x1b]0;pwned\x07\x1b[2J"
    blob = _mutate_line(base, "end", lambda o, _: json.dumps({**o, "reason": evil}))
    blob = _mutate_line(blob, "header", lambda o, _: json.dumps(
        {**o, "plan": {"probes": [{"probe": evil, "active": True}, {"probe": "x", "active": False, "why": evil}]}}))
    path = tmp_path / "r.jsonl"
    path.write_bytes(blob)
    r = run("report", str(path))
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "pwned" in r.stdout  # shown, escaped


def test_csv_cells_are_never_formulas(tmp_path):
    path = tmp_path / "live.jsonl"
    live.write_live(path, hostile="=HYPERLINK(\"http://x\",\"y\")")
    plain = tmp_path / "plain.jsonl"
    live.write_plain(plain)
    for args in (["report", str(path), "--csv", "--by", "file"], ["report", str(path), "--csv"],
                 ["compare", str(plain), str(path), "--csv", "--by", "layer"], ["timeline", str(path)]):
        r = run(*args)
        assert r.exit_code == 0, (args, r.stderr)
        cells = [c for row in csv.reader(io.StringIO(r.stdout)) for c in row]
        assert not [c for c in cells if c.startswith("=")], args
        if "file" in args:  # the path cell holds the name itself
            assert "'=HYPERLINK(\"http://x\",\"y\")" in cells, args


def test_timeline_csv_header_is_inert(tmp_path, base):
    # A subsystem (a stack's owner) becomes a column of the timeline.
    blob = _mutate_line(base, "stack", lambda o, _: json.dumps({**o, "owner": "=cmd|\x1b[31m"}))
    path = tmp_path / "r.jsonl"
    path.write_bytes(blob)
    r = run("timeline", str(path))
    assert r.exit_code == 0, r.stderr
    header = next(csv.reader(io.StringIO(r.stdout)))
    assert "'=cmd|\\x1b[31m" in header, header


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "rec.fifo"
    os.mkfifo(fifo)
    t = time.monotonic()
    p = subprocess.run(FOOTPRINT + ["report", str(fifo)], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - t < 30
    assert p.returncode == 2 and "not a regular file" in p.stderr and p.stderr.count("\n") == 1


def _maxrss_mib(args) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command and return its peak RSS (a fresh python for each: RUSAGE_CHILDREN
    keeps the largest child, so each run goes through a small wrapper)."""
    code = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) + '\\n' + p.stderr); "
            "sys.exit(p.returncode)")
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    kib, _, err = p.stdout.partition("\n")
    return subprocess.CompletedProcess(args, p.returncode, "", err), int(kib) / 1024


def test_memory_stays_bounded_on_a_crafted_line(tmp_path, base):
    # One line of empty lists: before, 61 MB of it took 3 GiB of RSS.
    path = tmp_path / "r.jsonl"
    for lists, why in ((5 << 20, "too many nested values"), (20 << 20, "too large")):
        path.write_bytes(base + b"[" + b"[]," * lists + b"[]]\n")
        p, rss = _maxrss_mib(FOOTPRINT + ["report", str(path)])
        assert p.returncode == 2 and why in p.stderr, p.stderr
        assert rss < 400, f"{rss:.0f} MiB peak for a {path.stat().st_size >> 20} MiB file"


def test_memory_stays_a_small_multiple_of_the_file(tmp_path, base):
    # Many short strings in a valid-looking but unknown record type: ~14x in objects at
    # worst; the reader drops unknown records, so this costs one line at a time.
    path = tmp_path / "r.jsonl"
    line = b'{"type":"future","x":[' + b",".join([b'"a"'] * 400_000) + b"]}\n"
    path.write_bytes(base + line * 40)  # 64 MB
    p, rss = _maxrss_mib(FOOTPRINT + ["report", str(path)])
    assert p.returncode == 0, p.stderr
    assert rss < 400, f"{rss:.0f} MiB peak for a {path.stat().st_size >> 20} MiB file"


def test_an_internal_error_is_one_line_exit_70():
    code = ("import tracer.commands\nfrom tracer.cli import main\n"
            "@main.command()\ndef boom():\n    raise RuntimeError('bad\\x1b[31m\\nthing')\nmain()")
    p = subprocess.run([sys.executable, "-c", code, "boom"], capture_output=True, text=True)
    assert p.returncode == 70, p.stderr
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr and "\x1b" not in p.stderr
    assert "internal error in `footprint boom`" in p.stderr and "report" in p.stderr


def test_a_closed_stdout_is_quiet(tmp_path, base):
    path = tmp_path / "r.jsonl"
    path.write_bytes(base)
    p = subprocess.run(" ".join(FOOTPRINT) + f" report {path} --by file | head -c 10 >/dev/null",
                       shell=True, capture_output=True, text=True, executable="/bin/bash")
    assert "Traceback" not in p.stderr and "Exception" not in p.stderr, p.stderr


# --- the fuzzer -----------------------------------------------------------------------------

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')

NUMBERS = st.sampled_from([b"1" + b"0" * 400, b"-1", b"-99999999999", b"9" * 5000, b"1e400", b"-1e400",
                           b"NaN", b"Infinity", b"-Infinity", b"0.5", b"18446744073709551616",
                           b"9223372036854775808", b"true", b"null", b'"7"', b"[]", b"{}"])
STRINGS = st.sampled_from([b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u001b[31m"', b'"=cmd|x"', b'"+1"',
                           b'"@SUM(A1)"', b'"\\u202eevil"', b'"\\u0000"', b'""', b'"' + b"x" * 5000 + b'"',
                           b"1", b"null", b"[]"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_recordings_through_every_reading_command(tmp_path, base, data):
    blob = base
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["number", "string", "nest", "truncate", "duplicate", "drop"]))
        if how in ("number", "string"):
            spans = [m.span() for m in (_NUMBER if how == "number" else _STRING).finditer(blob)]
            if not spans:
                continue
            a, b = data.draw(st.sampled_from(spans))
            other = st.integers(-(10 ** 6), 10 ** 12).map(lambda i: str(i).encode())
            blob = blob[:a] + data.draw((NUMBERS | other) if how == "number" else STRINGS) + blob[b:]
        elif how == "nest":
            depth = data.draw(st.sampled_from([10, 900, 5000, 100_000]))
            i = data.draw(st.integers(0, len(blob)))
            blob = blob[:i] + b"[" * depth + blob[i:]
        elif how == "truncate":
            blob = blob[: data.draw(st.integers(0, len(blob)))]
        else:
            lines = blob.splitlines(keepends=True)
            i = data.draw(st.integers(0, max(0, len(lines) - 1)))
            if lines:
                lines[i:i + 1] = [lines[i]] * 2 if how == "duplicate" else []
            blob = b"".join(lines)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    p = str(path)
    command = data.draw(st.sampled_from([
        (["report", p], {}), (["report", p, "--json"], {"json_out": True}),
        (["report", p, "--csv", "--by", "file"], {"csv_out": True}),
        (["report", p, "--by", "subsystem"], {}), (["answer", p], {}), (["answer", p, "--json"], {"json_out": True}),
        (["compare", p, p], {}), (["compare", p, p, "--json"], {"json_out": True}),
        (["compare", p, p, "--csv"], {"csv_out": True}), (["timeline", p], {"csv_out": True}),
        (["timeline", p, "--json"], {"json_out": True}),
        (["html", p, "-o", str(tmp_path / "r.html")], {}),
    ]))
    args, kw = command
    result = run(*args)
    event(f"exit {result.exit_code}")
    assert_clean(result, **kw)


@pytest.mark.parametrize("args", [["report"], ["report", "--json"], ["answer"], ["html", "-o", "{out}"]])
def test_a_loop_whose_backing_inode_is_unknown(tmp_path, args):
    """A topology may know a loop's backing file but not its inode (backing_ino null): the
    chain still shows, without that level's subsystem (found by the fuzzer)."""
    rec = tmp_path / "r.jsonl"
    live.write_live(rec)
    rec.write_text(rec.read_text().replace('"backing_ino":1350', '"backing_ino":null'))
    argv = [args[0], str(rec)] + [a.format(out=tmp_path / "r.html") for a in args[1:]]
    assert_clean(run(*argv), json_out="--json" in args)
