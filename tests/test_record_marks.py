"""The recorder's side of phase marks: the marks file is held (shared lock) from attach
on, read from its size at attach (old marks are not replayed) through the held fd, and
its lines are parsed by tracer.marks (malformed ones skipped)."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from tracer import recorder, recording


def _recorder(tmp_path, marks_path):
    rec = recorder.Recorder(recorder.Options(output=str(tmp_path / "r.jsonl"), marks=str(marks_path)))
    rec.writer = recording.Writer(str(tmp_path / "r.jsonl"), {"plan": {}})
    return rec


def _phases(tmp_path):
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    return [(r["t"], r["name"]) for r in map(json.loads, lines) if r["type"] == "phase"]


def test_held_marks_skip_old_ones_and_parse_new_ones(tmp_path):
    path = tmp_path / "marks"
    path.write_text("1.0 before-attach\n")
    rec = _recorder(tmp_path, path)
    rec._hold_marks()
    assert rec.marks_fd is not None and rec.marks_pos == len("1.0 before-attach\n")
    with pytest.raises(BlockingIOError):  # "a recording is running"
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    with open(path, "a") as f:
        f.write("2.5 initqueue\nnan bad\n-1 worse\ninf bad\nx bad\n5.0 \n3.0 switch-root\n4.0 torn")
    rec.poll_marks()
    assert _phases(tmp_path) == [(2.5, "initqueue"), (3.0, "switch-root")]
    with open(path, "a") as f:
        f.write("-line\n")  # the torn line, now complete: "4.0 torn-line"
    rec.poll_marks()
    assert _phases(tmp_path)[-1] == (4.0, "torn-line")
    rec.writer.close("stopped")
    os.close(rec.marks_fd)


def test_held_marks_file_is_created_when_absent(tmp_path):
    path = tmp_path / "marks"
    rec = _recorder(tmp_path, path)
    rec._hold_marks()
    assert path.exists() and rec.marks_pos == 0 and (path.stat().st_mode & 0o777) == 0o600
    os.close(rec.marks_fd)
    rec.writer.close("stopped")


def test_a_marks_file_that_cannot_be_held_is_one_log_line(tmp_path):
    (tmp_path / "victim").write_text("")
    (tmp_path / "marks").symlink_to(tmp_path / "victim")  # never followed
    said = []
    rec = recorder.Recorder(recorder.Options(output=str(tmp_path / "r"), marks=str(tmp_path / "marks")),
                            log=said.append)
    rec._hold_marks()  # recording goes on without marks
    assert rec.marks_fd is None and len(said) == 1 and said[0].startswith("marks not followed")
    rec.poll_marks()  # nothing to read, nothing raised


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")
def test_footprint_mark_reaches_a_running_recording_and_not_a_finished_one(tmp_path):
    import subprocess
    import sys
    import time

    fp = [sys.executable, "-m", "tracer"]
    marks, out = tmp_path / "marks", tmp_path / "r.jsonl"
    before = subprocess.run(fp + ["mark", "too-early", "--marks", str(marks)], capture_output=True, text=True)
    assert before.returncode == 2 and "no recording is running" in before.stderr
    rec = subprocess.Popen(fp + ["record", "-o", str(out), "--no-inventory", "--interval", "0.2",
                                 "--marks", str(marks)], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while b'"type":"sample"' not in (out.read_bytes() if out.exists() else b""):
            assert time.monotonic() < deadline and rec.poll() is None, rec.stderr.read() if rec.poll() else ""
            time.sleep(0.1)
        during = subprocess.run(fp + ["mark", "phase one", "--marks", str(marks)], capture_output=True, text=True)
        assert during.returncode == 0, during.stderr
        time.sleep(0.6)  # a few intervals: the recorder polls marks before each sample
    finally:
        rec.send_signal(2)
        rec.wait(timeout=120)
    after = subprocess.run(fp + ["mark", "too-late", "--marks", str(marks)], capture_output=True, text=True)
    assert after.returncode == 2 and "no recording is running" in after.stderr
    phases = [r["name"] for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "phase"]
    assert phases == ["phase one"]
