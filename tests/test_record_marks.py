"""The recorder's side of phase marks: with tracer.marks, the marks file is held (shared
lock) from attach on, read from its size at attach (old marks are not replayed) through
the held fd, and its lines are parsed by marks.parse; without tracer.marks, the file is
read by path as before. tracer.marks is stood in for here by a minimal fake."""

from __future__ import annotations

import fcntl
import json
import math
import os
import types

import pytest

from tracer import recorder, recording


def _fake_marks():
    def hold(path):
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd, os.fstat(fd).st_size

    def parse(lines):
        out = []
        for line in lines:
            t, _, name = line.partition(" ")
            t = float(t)  # ValueError on junk
            if not math.isfinite(t) or t < 0 or not name.strip():
                raise ValueError(f"bad mark {line!r}")
            out.append((t, name.strip()))
        return out

    return types.SimpleNamespace(hold=hold, parse=parse)


def _recorder(tmp_path, marks_path):
    rec = recorder.Recorder(recorder.Options(output=str(tmp_path / "r.jsonl"), marks=str(marks_path)))
    rec.writer = recording.Writer(str(tmp_path / "r.jsonl"), {"plan": {}})
    return rec


def _phases(tmp_path):
    lines = (tmp_path / "r.jsonl").read_text().splitlines()
    return [(r["t"], r["name"]) for r in map(json.loads, lines) if r["type"] == "phase"]


def test_held_marks_skip_old_ones_and_parse_new_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "marks", _fake_marks())
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
        f.write("2.5 initqueue\nnan bad\n-1 worse\n3.0 switch-root\n4.0 torn")
    rec.poll_marks()
    assert _phases(tmp_path) == [(2.5, "initqueue"), (3.0, "switch-root")]
    with open(path, "a") as f:
        f.write("-line\n")  # the torn line, now complete: "4.0 torn-line"
    rec.poll_marks()
    assert _phases(tmp_path)[-1] == (4.0, "torn-line")
    rec.writer.close("stopped")
    os.close(rec.marks_fd)


def test_held_marks_file_is_created_when_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "marks", _fake_marks())
    path = tmp_path / "marks"
    rec = _recorder(tmp_path, path)
    rec._hold_marks()
    assert path.exists() and rec.marks_pos == 0
    os.close(rec.marks_fd)
    rec.writer.close("stopped")


def test_without_tracer_marks_the_file_is_read_by_path(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "marks", None)
    path = tmp_path / "marks"
    path.write_text("1.5 one\n")
    rec = _recorder(tmp_path, path)
    rec._hold_marks()
    assert rec.marks_fd is None
    rec.poll_marks()
    assert _phases(tmp_path) == [(1.5, "one")]
    rec.writer.close("stopped")


def test_a_marks_file_that_cannot_be_held_is_one_log_line(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder, "marks", _fake_marks())
    said = []
    rec = recorder.Recorder(recorder.Options(output=str(tmp_path / "r"),
                                             marks=str(tmp_path / "no" / "such" / "marks")),
                            log=said.append)
    rec._hold_marks()  # recording goes on without marks
    assert rec.marks_fd is None and len(said) == 1 and said[0].startswith("marks not followed")


def test_a_held_fd_is_read_even_where_tracer_marks_is_missing(tmp_path, monkeypatch):
    """The sampler may not import tracer.marks although the recorder that attached did:
    the fd it inherited is still read, with the same rules (finite time >= 0, a name)."""
    monkeypatch.setattr(recorder, "marks", _fake_marks())
    path = tmp_path / "marks"
    rec = _recorder(tmp_path, path)
    rec._hold_marks()
    monkeypatch.setattr(recorder, "marks", None)
    path.write_text("2.0 one\ninf bad\n-3 bad\nx bad\n5.0 \n6.0 two\n")
    rec.poll_marks()
    assert _phases(tmp_path) == [(2.0, "one"), (6.0, "two")]
    os.close(rec.marks_fd)
    rec.writer.close("stopped")
