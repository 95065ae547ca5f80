"""The recording file is the recorder's alone (no symbolic link followed, a regular file,
an exclusive lock held to the end, across the exec into the sampler), and a signal at
any moment of `footprint record` ends in one true line: a complete recording, or
nothing recorded."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer import recording
from tracer.errors import FootprintError

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-m", "tracer"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")


def _run(args, **kw):
    return subprocess.run(FOOTPRINT + args, cwd=REPO, capture_output=True, text=True,
                          timeout=300, **kw)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("footprint: "), err
    return lines[0]


# --- the Writer on its own --------------------------------------------------------

def test_writer_refuses_a_symbolic_link_and_leaves_its_target_alone(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    target.chmod(0o644)
    for link, to in ((tmp_path / "link", target), (tmp_path / "dangling", tmp_path / "nowhere")):
        link.symlink_to(to)
        with pytest.raises(FootprintError, match="symbolic link"):
            recording.Writer(str(link), {"plan": {}})
    assert target.read_text() == "precious\n" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not (tmp_path / "nowhere").exists()


def test_writer_refuses_a_hard_link_and_leaves_its_twin_alone(tmp_path):
    twin = tmp_path / "twin"
    twin.write_text("precious\n")
    os.link(twin, tmp_path / "out.jsonl")
    with pytest.raises(FootprintError, match="hard links"):
        recording.Writer(str(tmp_path / "out.jsonl"), {"plan": {}})
    assert twin.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_writer_refuses_what_is_not_a_regular_file(kind, tmp_path):
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = Path("/dev/null")
    with pytest.raises(FootprintError) as err:  # a FIFO must not block the open
        recording.Writer(str(path), {"plan": {}})
    assert "\n" not in str(err.value) and "-o" in str(err.value)


def test_second_writer_on_the_same_file_is_refused_and_the_first_stays_intact(tmp_path):
    path = tmp_path / "r.jsonl"
    first = recording.Writer(str(path), {"plan": {}})
    first.write({"type": "phase", "t": 1.0, "name": "one"})
    before = path.read_bytes()
    with pytest.raises(FootprintError, match="being written by another footprint record: choose another -o"):
        recording.Writer(str(path), {"plan": {}})
    assert path.read_bytes() == before
    first.close("stopped")
    second = recording.Writer(str(path), {"plan": {}})  # free again once the first ended
    second.close("stopped")
    assert path.read_bytes().count(b'"type":"header"') == 1


def test_lock_survives_detach_and_append_through_the_inherited_fd(tmp_path):
    path = tmp_path / "r.jsonl"
    w = recording.Writer(str(path), {"plan": {}})
    fd = w.detach()  # what the recorder hands to the sampler
    assert os.get_inheritable(fd)
    with pytest.raises(FootprintError, match="being written"):
        recording.Writer(str(path))
    cont = recording.Writer.append(str(path), fd=fd)
    assert not os.get_inheritable(fd)
    cont.write({"type": "phase", "t": 2.0, "name": "after"})
    cont.close("stopped")
    kinds = [json.loads(line)["type"] for line in path.read_text().splitlines()]
    assert kinds == ["header", "phase", "end"]
    recording.Writer(str(path)).abandon()  # unlocked: the file is claimable again


def test_abandoned_claim_removes_only_a_file_it_created(tmp_path):
    new = tmp_path / "new.jsonl"
    recording.Writer(str(new)).abandon()
    assert not new.exists()
    old = tmp_path / "old.jsonl"
    old.write_text("an earlier recording\n")
    recording.Writer(str(old)).abandon()  # claimed, never started: not truncated
    assert old.read_text() == "an earlier recording\n"


# --- footprint record --------------------------------------------------------------

@needs_root
def test_record_refuses_a_symbolic_link_output(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    target.chmod(0o644)
    link = tmp_path / "rec.jsonl"
    link.symlink_to(target)
    p = _run(["record", "-o", str(link), "-d", "1"])
    assert p.returncode == 2 and "symbolic link" in _one_line(p.stderr), p.stderr
    assert target.read_text() == "precious\n" and stat.S_IMODE(target.stat().st_mode) == 0o644


@needs_root
def test_record_refuses_a_fifo_output(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    p = _run(["record", "-o", str(fifo), "-d", "1"], )
    assert p.returncode == 2 and "not a regular file" in _one_line(p.stderr), p.stderr


def _wait_for(path: Path, needle: bytes, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_bytes():
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} in {path} within {timeout} s")


@needs_root
@pytest.mark.bpf
def test_two_recorders_on_one_output(tmp_path):
    """The second is refused (one line, exit 2), also while the first is in its sampler
    (the lock went across the exec); the first recording ends complete and alone."""
    rec = tmp_path / "rec.jsonl"
    first = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.2",
                                          "--no-inventory"], cwd=REPO, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(rec, b'"stage":"sampler"', first)
        _wait_for(rec, b'"type":"sample"', first)
        fd = os.open(rec, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # the sampler holds it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        second = _run(["record", "-o", str(rec), "-d", "1"])
        assert second.returncode == 2, second.stderr
        assert _one_line(second.stderr) == (f"footprint: recording {rec} is being written by another "
                                            "footprint record: choose another -o")
        time.sleep(0.5)
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    r = recording.read(str(rec))
    assert r.end is not None and not r.partial and len(r.samples) >= 2
    assert rec.read_bytes().count(b'"type":"header"') == 1
    assert len({s.get("pid") for s in r.tracer}) == 1  # one sampler wrote it


def _check_interrupted(p_returncode: int, err: str, rec: Path, signame: str) -> str:
    """The invariants of an interrupted `footprint record`, whenever the signal came."""
    assert "Traceback" not in err, err
    assert p_returncode in (0, 130), (p_returncode, err)
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("footprint: ") for line in lines), err
    last = lines[-1]
    assert sum(("written" in line or "interrupted" in line) for line in lines) == 1, err
    if p_returncode == 130:
        assert len(lines) == 1 and last.startswith("footprint: interrupted"), err
        assert not rec.exists(), "nothing was recorded, yet a file is left"
        return "nothing"
    assert last == f"footprint: recording {rec} written (signal {signame})", err
    r = recording.read(str(rec))
    assert r.end is not None and r.end["reason"] == f"signal {signame}" and not r.partial
    rep = _run(["report", str(rec)])
    if rep.returncode != 0:
        assert rep.returncode == 2 and "holds no sample yet" in _one_line(rep.stderr), rep.stderr
    return "written"


@needs_root
@pytest.mark.bpf
def test_sigint_at_any_moment_ends_in_one_true_line(tmp_path):
    """Delays from Python's start-up to sampling: before anything exists, while
    attaching, during the hand-off, in the inventory, while sampling. The invariants
    hold whichever window a delay lands in (under load they shift)."""
    seen = []
    for i, delay in enumerate((0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 2.5)):
        rec = tmp_path / f"rec{i}.jsonl"
        p = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.3",
                                          "--inventory-seconds", "1"],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        seen.append((delay, _check_interrupted(p.returncode, err, rec, "SIGINT")))
    print(seen)


@needs_root
@pytest.mark.bpf
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_the_hand_off_ends_the_recording(sig, tmp_path):
    """A signal sent as soon as the header is written lands just before or during the
    exec into the sampler (its imports): the recording still ends with an end record."""
    for i in range(3):
        rec = tmp_path / f"rec{i}.jsonl"
        p = subprocess.Popen(FOOTPRINT + ["record", "-o", str(rec), "--interval", "0.3",
                                          "--no-inventory"],
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (rec.exists() and rec.stat().st_size > 0):
            assert time.monotonic() < deadline and p.poll() is None, p.stderr.read()
            time.sleep(0.001)
        time.sleep(i * 0.03)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert _check_interrupted(p.returncode, err, rec, sig.name) == "written"
