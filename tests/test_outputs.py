"""Output files written as root (html -o, html --png, timeline --png, report --parquet):
a symlink planted at the output path is replaced, not followed; files are 0600 like
recordings; a missing directory or a bad second path is one line, exit 2, and nothing
half-written or stray is left behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

import synthetic_live as live

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (command line before the output path, option naming it)
OUTPUTS = {
    "html": (["html", "{rec}", "-o"], ".html"),
    "html-png": (["html", "{rec}", "-o", "page.html", "--png"], ".png"),
    "timeline-png": (["timeline", "{rec}", "--png"], ".png"),
    "report-parquet": (["report", "{rec}", "--parquet"], ".parquet"),
}


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return live.write_live(tmp_path_factory.mktemp("rec") / "live.jsonl")


def footprint(cwd, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO)  # the tracer of this tree, from any cwd
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def one_line_error(p) -> bool:
    lines = p.stderr.strip().splitlines()
    return p.returncode == 2 and len(lines) == 1 and lines[0].startswith("footprint: ")


def args_for(kind, rec, path):
    head, _ = OUTPUTS[kind]
    return [a.format(rec=rec) for a in head] + [str(path)]


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_symlink_at_output_is_replaced_not_followed(tmp_path, rec, kind):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / f"out{OUTPUTS[kind][1]}"
    out.symlink_to(victim)
    p = footprint(tmp_path, *args_for(kind, rec, out))
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == "precious\n"
    st = os.lstat(out)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size > 0
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(
        ["victim", out.name] + (["page.html"] if kind == "html-png" else []))  # no temporaries


@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_missing_directory_is_one_line(tmp_path, rec, kind):
    p = footprint(tmp_path, *args_for(kind, rec, tmp_path / "no" / "such" / "out"))
    assert one_line_error(p), p.stderr
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == []


def test_directory_at_output_is_refused(tmp_path, rec):
    (tmp_path / "out.html").mkdir()
    p = footprint(tmp_path, "html", rec, "-o", "out.html")
    assert one_line_error(p) and "is a directory" in p.stderr, p.stderr
    assert list((tmp_path / "out.html").iterdir()) == []


@pytest.mark.parametrize("bad_png", ["no/such/plot.png", "plotdir"])
def test_bad_png_path_writes_no_html(tmp_path, rec, bad_png):
    (tmp_path / "plotdir").mkdir()
    p = footprint(tmp_path, "html", rec, "-o", "page.html", "--png", bad_png)
    assert one_line_error(p), p.stderr
    assert sorted(f.name for f in tmp_path.iterdir()) == ["plotdir"]


def test_existing_output_is_replaced_whole(tmp_path, rec):
    out = tmp_path / "page.html"
    out.write_text("old " * 100_000)
    os.chmod(out, 0o644)
    p = footprint(tmp_path, "html", rec, "-o", "page.html")
    assert p.returncode == 0, p.stderr
    assert out.read_text().lstrip().lower().startswith("<!doctype html")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_report_at_an_earlier_sample_speaks_of_that_moment(tmp_path):
    """`report --at N` (issue 17): the header counts the samples and seconds up to sample
    N, and says how many the recording holds; at the last sample it reads as before."""
    from tracer import account, recording, report

    path = tmp_path / "live.jsonl"
    live.write_live(path)
    rec = recording.read(str(path))
    total = len(rec.samples)
    t0 = rec.header["attached"]
    first = report.text(rec, account.build(rec, 0)).splitlines()[0]
    assert f"sample 1 of {total}, {rec.samples[0]['t'] - t0:.1f} s of {rec.samples[-1]['t'] - t0:.1f} s" in first
    last = report.text(rec, account.build(rec, -1)).splitlines()[0]
    assert f"{total} samples over {rec.samples[-1]['t'] - t0:.1f} s" in last
    s = report.summary(rec, account.build(rec, 1))
    assert (s["samples"], s["samples_total"]) == (2, total)
    p = footprint(tmp_path, "report", str(path), "--at", "0")
    assert p.returncode == 0 and f"sample 1 of {total}," in p.stdout.splitlines()[0]
