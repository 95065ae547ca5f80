"""compare: B − A per subsystem and layer adds up to the difference in MemTotal − MemFree."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import synthetic_live as live
from tracer import account, recording
from tracer.compare import compare, text


@pytest.fixture
def pair(tmp_path):
    plain = recording.read(live.write_plain(tmp_path / "plain.jsonl"))
    liv = recording.read(live.write_live(tmp_path / "live.jsonl"))
    return (plain, account.build(plain)), (liv, account.build(liv))


@pytest.mark.parametrize("by", ["subsystem", "layer"])
def test_deltas_add_up_to_the_in_use_difference(pair, by):
    (ra, a), (rb, b) = pair
    cmp = compare(a, b, by=by, rec_a=ra, rec_b=rb)
    nonfree_delta = b.meminfo["nonfree_mib"] - a.meminfo["nonfree_mib"]
    assert cmp["nonfree_delta_mib"] == pytest.approx(nonfree_delta)
    assert sum(r["delta_mib"] for r in cmp["rows"]) == pytest.approx(nonfree_delta, abs=1e-9)
    assert cmp["sum_of_deltas_mib"] == pytest.approx(nonfree_delta, abs=1e-9)
    assert abs(cmp["residual_mib"]) < 1e-9
    # each side's rows are its own account, whole
    assert sum(r["a_mib"] for r in cmp["rows"]) == pytest.approx(a.meminfo["nonfree_mib"])
    assert sum(r["b_mib"] for r in cmp["rows"]) == pytest.approx(b.meminfo["nonfree_mib"])
    for r in cmp["rows"]:
        assert r["delta_mib"] == pytest.approx(r["b_mib"] - r["a_mib"])
    # both sides' unattributed rows are in the table
    un = [r for r in cmp["rows"] if r["subsystem"] == "unattributed"]
    assert len(un) == 1 and un[0]["a_mib"] == pytest.approx(a.meminfo["unattributed_mib"])
    assert un[0]["b_mib"] == pytest.approx(b.meminfo["unattributed_mib"])


def test_rows_on_one_side_only_get_zero_on_the_other(pair):
    (_, a), (_, b) = pair
    rows = {r["subsystem"]: r for r in compare(a, b)["rows"]}
    assert rows["squashfs"]["a_mib"] == 0 and rows["squashfs"]["b_mib"] > 0
    assert rows["device-mapper"]["a_mib"] == 0 and rows["device-mapper"]["b_mib"] > 0


def test_text_reads_like_free_and_shows_the_residual(pair):
    (ra, a), (rb, b) = pair
    out = text(compare(a, b, rec_a=ra, rec_b=rb))
    assert "in use (MemTotal-MemFree)" in out and "B - A" in out
    residual = next(line for line in out.splitlines() if line.startswith("residual"))
    assert residual.split()[-1] in ("+0.0", "-0.0")
    assert "unattributed: A" in out


def test_compare_command_formats(tmp_path):
    a = live.write_plain(tmp_path / "plain.jsonl")
    b = live.write_live(tmp_path / "live.jsonl")
    run = lambda *args: subprocess.run([sys.executable, "-m", "tracer", "compare", a, b, *args],
                                       capture_output=True, text=True, check=True).stdout
    obj = json.loads(run("--json"))
    assert {"a", "b", "rows", "nonfree_delta_mib", "sum_of_deltas_mib", "residual_mib"} <= obj.keys()
    assert {"subsystem", "a_mib", "b_mib", "delta_mib"} <= obj["rows"][0].keys()
    assert obj["sum_of_deltas_mib"] == pytest.approx(obj["nonfree_delta_mib"])
    layer = json.loads(run("--json", "--by", "layer"))
    assert "layer" in layer["rows"][0]
    assert run("--csv").splitlines()[0] == "subsystem,a_mib,b_mib,delta_mib"
    assert "residual" in run()
    bad = subprocess.run([sys.executable, "-m", "tracer", "compare", a, str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def _num(line: str, col: int = -1) -> float:
    return float(line.split()[col])


@pytest.mark.parametrize("by", ["subsystem", "layer"])
def test_text_folds_small_differences_and_the_sums_stay_exact(pair, by):
    (ra, a), (rb, b) = pair
    cmp = compare(a, b, by=by, rec_a=ra, rec_b=rb)
    short, every = text(cmp).splitlines(), text(cmp, all_rows=True).splitlines()
    small = [r for r in cmp["rows"] if abs(r["delta_mib"]) < 1.0]
    assert len(small) > 1
    other = [line for line in short if line.startswith("other (")]
    assert other == [o for o in other if o.startswith(f"other ({len(small)} rows)")] and len(other) == 1
    assert _num(other[0]) == pytest.approx(sum(r["delta_mib"] for r in small), abs=0.051)
    assert len(short) == len(every) - len(small) + 1 and not any(x.startswith("other (") for x in every)
    # the table's sum line is the same either way, and equals the in-use difference
    total = lambda lines: next(x for x in lines if x.startswith("sum of rows"))  # noqa: E731
    assert total(short) == total(every)
    assert _num(total(short)) == pytest.approx(cmp["nonfree_delta_mib"], abs=0.051)


def test_report_folds_small_rows_and_all_shows_them(tmp_path):
    rec = live.write_live(tmp_path / "live.jsonl")
    run = lambda *a: subprocess.run([sys.executable, "-m", "tracer", "report", rec, *a],  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout.splitlines()
    short, every = run(), run("--all")
    other = next(x for x in short if x.startswith("other ("))
    acc = account.build(recording.read(rec)).by("layer")
    small = acc[acc["resident_mib"].abs() < 1.0]
    assert other.startswith(f"other ({len(small)} rows)")
    assert int(other.split()[-1]) == int(small["resident_pages"].sum())  # pages: exact
    total = lambda lines: next(x for x in lines if x.startswith("total"))  # noqa: E731
    assert total(short) == total(every) and len(every) - len(short) == len(small) - 1
