"""Faults: the recorder killed, a full disk, maps too small, fuzzed recordings, not root,
a missing tracepoint. Each case asserts what the user gets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer import account, loader, recording, report
from tracer.errors import FootprintError

FOOTPRINT = [sys.executable, "-m", "tracer"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")


def wait_for_samples(path, n=2, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b'"type":"sample"') >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} samples in {path} within {timeout} s")


@needs_root
@pytest.mark.bpf
def test_sigkill_leaves_a_readable_partial_recording(tmp_path):
    rec = tmp_path / "r.jsonl"
    p = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.2", "--no-inventory"],
                         stderr=subprocess.DEVNULL)
    try:
        wait_for_samples(rec, 3)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    r = recording.read(str(rec))
    assert r.partial and r.end is None and len(r.samples) >= 3
    out = subprocess.run(FOOTPRINT + ["report", str(rec)], capture_output=True, text=True)
    assert out.returncode == 0 and "PARTIAL" in out.stdout
    obj = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)],
                                    capture_output=True, text=True, check=True).stdout)
    assert obj["recording"]["partial"] is True


@needs_root
@pytest.mark.bpf
def test_disk_full_while_writing_is_one_line_and_keeps_what_was_written(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        rec = mnt / "r.jsonl"
        p = subprocess.run(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.05", "-d", "60"],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert "free space" in last and "Traceback" not in p.stderr
        r = recording.read(str(rec))  # what fitted is readable
        assert r.header["format"] == "footprint-recording"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@needs_root
@pytest.mark.bpf
def test_maps_too_small_are_reported_as_drops(tmp_path):
    rec = tmp_path / "r.jsonl"
    subprocess.run(FOOTPRINT + ["record", "-o", str(rec), "-d", "3", "--interval", "0.5",
                                "--max-files", "64", "--max-stacks", "64", "--max-objects", "64",
                                "--no-inventory"],
                   check=True, capture_output=True, timeout=300, env=dict(os.environ))
    # Make sure files were touched while recording: the recorder itself reads many.
    obj = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], capture_output=True,
                                    text=True, check=True).stdout)
    assert obj["map_drops"] > 0
    assert obj["stats"]["objects_full"] > 0 or obj["stats"]["files_full"] > 0
    text = subprocess.run(FOOTPRINT + ["report", str(rec)], capture_output=True, text=True,
                          check=True).stdout
    assert "map drops: 0" not in text and "map drops:" in text


@pytest.mark.parametrize("args", [["record", "-o", "/tmp/footprint-never-written"],
                                  ["experiment", "--variants", "plain"]])
def test_not_root_is_one_line_exit_2(args, monkeypatch, capsys):
    """As an unprivileged user (euid 65534 as the process sees it): one line, exit 2."""
    from tracer.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    with pytest.raises(SystemExit) as exit_:
        main(args, prog_name="footprint")
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "root" in err, err
    assert not os.path.exists("/tmp/footprint-never-written")


def test_missing_tracepoint_is_one_line(tmp_path, monkeypatch):
    """A kernel without the filemap events (built with fake tracefs content)."""
    fake = tmp_path / "tracing"
    (fake / "events" / "kmem" / "mm_page_alloc").mkdir(parents=True)
    (fake / "events" / "kmem" / "mm_page_alloc" / "format").write_text(
        "name: mm_page_alloc\nformat:\n\tfield:unsigned long pfn;\toffset:8;\tsize:8;\tsigned:0;\n")
    monkeypatch.setattr(loader, "TRACEFS_CANDIDATES", (str(fake),))
    with pytest.raises(FootprintError, match="filemap:mm_filemap_add_to_page_cache is missing"):
        loader.plan(max_pfn=1024, kernel_headers=None) if os.path.isdir("/var/cache/footprint/headers") \
            else loader.plan(max_pfn=1024, kernel_headers=str(tmp_path))


def test_no_headers_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    monkeypatch.setattr(loader, "CACHE_DIR", tmp_path / "nothing")
    monkeypatch.setattr(loader, "_kernel_release", lambda: "0.0.0-nowhere")
    with pytest.raises(FootprintError, match="no kernel headers for 0.0.0-nowhere"):
        loader.find_headers()
    with pytest.raises(FootprintError, match="not a kernel header tree"):
        loader.find_headers(str(tmp_path))


# --- fuzzed recordings: clean errors or a valid account, never a traceback ----------

_BASE = {}


def _base_recording(path):
    """One fixed recording for every example (hypothesis needs the same input each run)."""
    if "blob" not in _BASE:
        from test_account import meminfo, write
        write(path, [{"meminfo": meminfo(10000, 6000, 3000, Slab=10),
                      "files": {"7:0:2": [5, 5, 5, 0, 0], "254:0:12": [3, 3, 3, 0, 0]},
                      "slab": {"ext4_inode_cache": [1, 2, 3]}, "vmalloc": {"x": 1}}],
              records=[{"type": "oom", "t": 2.5, "pid": 42, "comm": "hog", "trigger": "hog"}])
        _BASE["blob"] = path.read_bytes()
    return _BASE["blob"]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_recordings_fail_cleanly(tmp_path, data):
    base = _base_recording(tmp_path / "base.jsonl")
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "json"]))
    if how == "truncate":
        blob = base[: data.draw(st.integers(0, len(base)))]
    elif how == "flip":
        i = data.draw(st.integers(0, len(base) - 1))
        blob = base[:i] + bytes([data.draw(st.integers(0, 255))]) + base[i + 1:]
    elif how == "splice":
        blob = base + data.draw(st.binary(max_size=200))
    else:
        value = data.draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
            lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
            max_leaves=12))
        lines = base.decode().splitlines()
        i = data.draw(st.integers(0, len(lines) - 1))
        obj = json.loads(lines[i])
        target = obj
        # Descend into the record (e.g. a topology's mounts) and replace one value.
        for _ in range(data.draw(st.integers(0, 3))):
            if isinstance(target, dict) and target:
                k = data.draw(st.sampled_from(sorted(target)))
                if not isinstance(target[k], (dict, list)) or not target[k]:
                    break
                target = target[k]
            elif isinstance(target, list) and target:
                nxt = target[data.draw(st.integers(0, len(target) - 1))]
                if not isinstance(nxt, (dict, list)) or not nxt:
                    break
                target = nxt
        if isinstance(target, dict) and target:
            target[data.draw(st.sampled_from(sorted(target)))] = value
        elif isinstance(target, list) and target:
            target[data.draw(st.integers(0, len(target) - 1))] = value
        lines[i] = json.dumps(obj)
        blob = ("\n".join(lines) + "\n").encode()
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(blob)
    try:
        rec = recording.read(str(path))
        if rec.samples:
            acc = account.build(rec)
            json.dumps(report.to_json(rec, acc), default=str)
            report.text(rec, acc)
    except FootprintError as err:
        assert "\n" not in str(err)


def test_a_command_whose_entry_point_does_not_load_fails_alone_in_one_line():
    """Another package's broken footprint.commands entry point costs that command only."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from tracer.cli import _unloadable, main

    ep = SimpleNamespace(name="broken", value="nowhere.module:cmd")
    cmd = _unloadable(ep, ImportError("No module named 'nowhere'"))
    group = type(main)("footprint", commands={"broken": cmd, **main.commands})
    r = CliRunner().invoke(group, ["broken", "--any", "arg"])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, (r.exit_code, r.stderr)
    assert "`footprint broken` could not be loaded from nowhere.module:cmd" in r.stderr
    assert CliRunner().invoke(group, ["mark", "--help"]).exit_code == 0
