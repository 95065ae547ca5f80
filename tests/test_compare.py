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
