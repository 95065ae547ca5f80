"""`footprint mark NAME` puts a mark on a running recording only: the recorder holds a
shared lock on the marks file (tracer.marks.hold) and reads from where the file ended when
it attached. Names are one printable line; times that are not finite and ≥ 0 are dropped."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from tracer import marks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As user nobody: imports first (the interpreter's files may be unreadable to nobody),
# then drop to uid/gid 65534 and run the CLI.
AS_NOBODY = """
import os, sys
import tracer.cli, tracer.commands, tracer.marks, tracer.dracut, fcntl, time, errno
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
sys.argv[0] = "footprint"
tracer.cli.main()
"""


def footprint(*args, nobody=False) -> subprocess.CompletedProcess:
    head = ["-c", AS_NOBODY] if nobody else ["-m", "tracer"]
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=REPO))


def one_line_error(p) -> bool:
    lines = p.stderr.strip().splitlines()
    return p.returncode == 2 and len(lines) == 1 and lines[0].startswith("footprint: ")


@pytest.fixture
def recorder(tmp_path):
    """A marks file held as the recorder holds it, with a mark of an earlier recording."""
    path = tmp_path / "marks"
    path.write_text("1.000000 earlier-recording\n")
    fd, pos = marks.hold(str(path))
    yield path, fd, pos
    os.close(fd)


def test_no_recorder_no_file(tmp_path):
    path = tmp_path / "marks"
    p = footprint("mark", "phase", "--marks", str(path))
    assert one_line_error(p) and "no recording is running" in p.stderr, p.stderr
    assert not path.exists()


def test_no_recorder_stale_file_is_left_alone(tmp_path):
    path = tmp_path / "marks"
    path.write_text("1.0 old\n")
    p = footprint("mark", "phase", "--marks", str(path))
    assert one_line_error(p) and "no recording is running" in p.stderr, p.stderr
    assert path.read_text() == "1.0 old\n"


def test_mark_reaches_the_holder_and_old_marks_are_not_replayed(recorder):
    path, fd, pos = recorder
    assert pos == len("1.000000 earlier-recording\n")
    p = footprint("mark", "after-read", "--marks", str(path))
    assert p.returncode == 0, p.stderr
    lines, end = marks.read(fd, pos)
    assert [name for _t, name in marks.parse(lines)] == ["after-read"]
    assert end == path.stat().st_size
    assert marks.read(fd, end) == ([], end)


def test_shell_appends_pass_the_shared_lock(recorder):
    path, fd, pos = recorder  # the dracut hooks: `echo "$t $name" >> marks`
    subprocess.run(["sh", "-c", f'echo "12.5 pre-udev" >> {path}'], check=True, timeout=10)
    assert marks.parse(marks.read(fd, pos)[0]) == [(12.5, "pre-udev")]


def test_hold_creates_the_file_0600_and_refuses_a_symlink(tmp_path):
    path = tmp_path / "run" / "marks"
    fd, pos = marks.hold(str(path))
    os.close(fd)
    assert pos == 0 and (path.stat().st_mode & 0o777) == 0o600
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(OSError):
        marks.hold(str(link))
    p = footprint("mark", "x", "--marks", str(link))
    assert one_line_error(p) and "symlink" in p.stderr, p.stderr


@pytest.mark.parametrize("name", ["a\nb", "a\n999 injected", "bell\x07", "\x1b[31mred", "",
                                  "   ", "evil\u202egnp", "x" * 65, "tab\there"])
def test_bad_names_refused(recorder, name):
    path, fd, pos = recorder
    p = footprint("mark", name, "--marks", str(path))
    assert one_line_error(p), p.stderr
    assert marks.read(fd, pos) == ([], pos)


def test_parse_drops_bad_times_and_names():
    lines = ["nan phase", "inf phase", "-inf phase", "-1.5 phase", "1e999 phase", "x phase",
             "2.0 ", "3.0 \x1b[2J", "4.0 " + "y" * 65, "", "5.25 ok", b"6.5 bytes-ok\n",
             "7.0  spaced  "]
    assert marks.parse(lines) == [(5.25, "ok"), (6.5, "bytes-ok"), (7.0, "spaced")]


@pytest.mark.skipif(os.geteuid() != 0, reason="drops from root to nobody")
def test_non_root_is_one_line(recorder):
    path, fd, pos = recorder
    # a directory nobody may enter, then one they may: the 0600 file is still root's
    d = tempfile.mkdtemp()
    try:
        os.chmod(d, 0o755)
        open_path = os.path.join(d, "marks")
        held, held_pos = marks.hold(open_path)
        try:
            for where in (path, open_path):
                p = footprint("mark", "phase", "--marks", str(where), nobody=True)
                assert one_line_error(p) and "root" in p.stderr, p.stderr
            assert os.path.getsize(open_path) == 0
        finally:
            os.close(held)
    finally:
        os.unlink(os.path.join(d, "marks"))
        os.rmdir(d)


def test_unwritable_path_is_one_line(tmp_path):
    p = footprint("mark", "phase", "--marks", str(tmp_path))  # a directory
    assert one_line_error(p), p.stderr
