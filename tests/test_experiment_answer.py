"""The experiment's answer (issue 5): live vs plain side by side at each moment, the
answer naming squashfs and device-mapper with numbers, the boots ranked, reports on disk.

Unit tests run on synthetic recordings (tests/synthetic_live.py); the guest tests read the
result of ONE real traced experiment per session (plain and live, after-boot and
after-read, 64 MiB), run as a subprocess exactly as a user runs it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import synthetic_live as live
from conftest import FOOTPRINT, REPO, run_experiment
from tracer import recording
from tracer.errors import FootprintError
from vm import sidebyside as S, workloads as W
from vm.experiment import SEED
from vm.results import Boot, Experiment, Moment, MomentAccount

QUESTION = ("squashfs", "device-mapper")


# --------------------------------------------------------------------- synthetic

def _boot(name, nonfree, delivery, moments, used=None):
    return {"name": name, "nonfree_mib": nonfree, "used_mib": used if used is not None else nonfree - 40,
            "delivery_mib": delivery, "rootfs_mib": 900.0,
            "moments": [{"name": n, "t_s": t, "nonfree_mib": nonfree + i * 10.0, "used_mib": nonfree - 40.0}
                        for i, (n, t) in enumerate(moments)]}


@pytest.fixture
def synthetic(tmp_path):
    """An experiment result with a plain and a live boot, two moments each, analysed from
    the synthetic recordings (live: after-boot at sample 1, after-read at the last)."""
    live.write_live(S.recording_path(tmp_path, "live"))
    live.write_plain(S.recording_path(tmp_path, "plain"))
    exp = Experiment.from_dict(
        {"boots": [_boot("plain", 130.0, 1200.0, [("after-boot", 1.0), ("after-read", 3.9)]),
                   _boot("live", 240.0, 400.0, [("after-boot", 2.5), ("after-read", 3.9)])],
         "seed": SEED})
    an = S.analyse(exp, tmp_path)
    return exp, an, tmp_path


def test_each_moment_has_its_own_account(synthetic):
    exp, an, _ = synthetic
    assert all(isinstance(m.account, MomentAccount) for b in exp.boots for m in b.moments)
    assert exp.boot("live").moment("after-read").account.mib("squashfs") == pytest.approx(
        live.SQUASHFS_PAGES * live.PS / (1 << 20))
    result = exp.to_dict()
    lv = result["boots"][1]["moments"]
    assert [m["sample_index"] for m in lv] == [1, 2]  # first sample at or after each mark
    assert lv[0]["sample_t_s"] == 3.0 and lv[1]["sample_t_s"] == 4.0
    sq = [sum(r["resident_pages"] for r in m["account"] if r["subsystem"] == "squashfs") for m in lv]
    assert sq[0] < sq[1] == live.SQUASHFS_PAGES
    # each moment's account adds up to its own MemTotal - MemFree
    for m in lv:
        assert sum(r["resident_mib"] for r in m["account"]) == pytest.approx(
            m["account_meminfo"]["nonfree_mib"], abs=0.01)


@pytest.mark.parametrize("by", ["subsystem", "layer"])
def test_side_by_side_deltas_add_up_and_the_residual_is_shown(synthetic, by):
    exp, _, _ = synthetic
    result = exp.to_dict()
    assert [e["moment"] for e in result["side_by_side"]] == ["after-boot", "after-read"]
    for e in result["side_by_side"]:
        c = e[by]
        deltas = sum(r["delta_mib"] for r in c["rows"])
        nonfree_delta = c["b"]["nonfree_mib"] - c["a"]["nonfree_mib"]
        assert deltas == pytest.approx(c["sum_of_deltas_mib"])
        assert c["nonfree_delta_mib"] == pytest.approx(nonfree_delta)
        assert c["residual_mib"] == pytest.approx(nonfree_delta - deltas)
        assert abs(c["residual_mib"]) < 0.01
    txt = S.text(result)
    assert txt.count("residual (in-use delta - sum)") == 2 * len(result["side_by_side"])
    assert "the per-subsystem differences add up to the difference in MemTotal − MemFree" in txt
    assert "residual +0.0 MiB" in txt


def test_question_rows_nonzero_on_live_zero_on_plain(synthetic):
    exp, _, _ = synthetic
    result = exp.to_dict()
    for e in result["side_by_side"]:
        rows = {r["subsystem"]: r for r in e["subsystem"]["rows"]}
        for sub in QUESTION:
            assert rows[sub]["b_mib"] > 0 and rows[sub]["a_mib"] == 0
    table = S.moments_table(result)
    plain_line = next(line for line in table.splitlines() if line.startswith("after-read   plain"))
    assert plain_line.split()[-3:] == ["0.0", "0.0", "0.0"]


def test_the_answer_names_squashfs_and_device_mapper_with_numbers(synthetic):
    exp, _, _ = synthetic
    result = exp.to_dict()
    ans = result["answer"]
    assert ans["boot"] == "live" and ans["against"] == "plain" and ans["moment"] == "after-boot"
    assert set(ans["by_moment"]) == {"after-boot", "after-read"}
    last = ans["by_moment"]["after-read"]
    assert last["subsystems"]["squashfs"]["pages"] == live.SQUASHFS_PAGES
    assert last["subsystems"]["device-mapper"]["pages"] == live.DM_PAGES
    assert f"squashfs claims {live.SQUASHFS_PAGES:,} pages" in last["paragraph"]
    assert f"device-mapper claims {live.DM_PAGES:,} pages" in last["paragraph"]
    assert "Against the plain disk" in last["paragraph"]
    assert last["paragraph"] in S.text(result)
    json.dumps(result)  # the whole result is JSON


def test_ranking_by_memory_and_by_delivery():
    result = {"boots": [_boot("plain", 130.0, 1200.0, []), _boot("live", 240.0, 400.0, []),
                        _boot("live-ram", 940.0, 400.5, [], used=580.0),
                        {"name": "live-direct", "error": "boot failed"}], "seed": SEED}
    rk = S.ranking(result)
    assert [r["name"] for r in rk["rows"]] == ["plain", "live", "live-ram"]
    assert [r["rank"] for r in rk["rows"]] == [1, 2, 3]
    assert rk["by_nonfree"] == ["plain", "live", "live-ram"]
    assert rk["by_delivery"] == ["live", "live-ram", "plain"]
    assert rk["by_used"] == ["plain", "live", "live-ram"]
    result["ranking"] = rk
    table = S.ranking_table(result)
    lines = table.splitlines()
    assert lines[2].split()[:3] == ["1", "plain", "130.0"]
    assert any(line.split()[:3] == ["LiveCD", "2014", "626"] for line in lines)
    assert "smallest delivery first: live, live-ram, plain" in table


def test_csv_and_reports_on_disk(synthetic):
    exp, an, tmp = synthetic
    out = tmp / "out"
    files = S.write_out(exp, an, out)
    result = exp.to_dict()
    for name in ("experiment.json", "side-by-side.csv", "report.html", "plot.png",
                 "report-after-boot.html", "report-after-read.html",
                 "live.recording.jsonl", "plain.recording.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert files["report"] == str(out / "report.html")
    rows = list(csv.DictReader(io.StringIO((out / "side-by-side.csv").read_text())))
    for moment in ("after-boot", "after-read"):
        mine = [r for r in rows if r["moment"] == moment and r["by"] == "subsystem"]
        body = [r for r in mine if r["subsystem"] not in ("in use (MemTotal-MemFree)", "sum of rows",
                                                           "residual (in-use delta - sum)")]
        in_use = next(r for r in mine if r["subsystem"] == "in use (MemTotal-MemFree)")
        resid = next(r for r in mine if r["subsystem"] == "residual (in-use delta - sum)")
        assert sum(float(r["delta_mib"]) for r in body) + float(resid["delta_mib"]) == pytest.approx(
            float(in_use["delta_mib"]))
    page = (out / "report.html").read_text()
    assert 'id="compare"' in page and "squashfs claims" in page
    back = json.loads((out / "experiment.json").read_text())
    assert back["answer"]["paragraph"] == result["answer"]["paragraph"]
    assert back["files"]["json"] == str(out / "experiment.json")


def test_a_saved_run_reads_back_into_typed_objects_and_out_the_same():
    """experiment.json → Experiment → the same JSON, key for key (tests/data/
    experiment-real.json, a real run); its boots and moments are typed."""
    real = (REPO / "tests" / "data" / "experiment-real.json").read_text()
    exp = Experiment.from_dict(json.loads(real))
    assert json.dumps(exp.to_dict()) == json.dumps(json.loads(real))
    live_boot = exp.boot("live")
    assert isinstance(live_boot, Boot) and live_boot.nonfree_mib == json.loads(real)["boots"][1]["nonfree_mib"]
    assert [type(m) for m in live_boot.moments] == [Moment] * len(live_boot.moments)
    assert exp.moment_names()[0] == "after-boot"
    failed = Experiment.from_dict({"boots": [{"name": "live", "error": "no"}], "seed": SEED})
    assert failed.ok == [] and failed.to_dict() == {"boots": [{"name": "live", "error": "no"}], "seed": SEED}


def test_sample_at_is_the_first_sample_at_or_after_the_mark(tmp_path):
    rec = recording.read(live.write_live(tmp_path / "l.jsonl"))  # samples at 2, 3, 4 s
    assert rec.sample_at(0.0) == (0, "")
    assert rec.sample_at(2.0) == (0, "")
    assert rec.sample_at(2.01) == (1, "")
    i, why = rec.sample_at(9.0)
    assert i == 2 and "no sample after the mark" in why


def test_workload_names():
    assert W.parse("all") == list(W.MOMENTS)
    assert W.parse("after-read") == ["after-boot", "after-read"]
    assert W.parse("after-write,after-boot") == ["after-boot", "after-write"]
    with pytest.raises(FootprintError, match="unknown workload 'after-lunch'"):
        W.parse("after-read,after-lunch")


def test_cli_unknown_workload_one_line():
    p = subprocess.run([*FOOTPRINT, "experiment", "--workload", "after-lunch"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "unknown workload 'after-lunch'" in p.stderr


# --------------------------------------------------------------------- the real experiment

@pytest.fixture(scope="session")
def answered(lab_cache):
    """`footprint experiment --json --variants plain,live --workload after-boot,after-read
    --workload-mib 64 --out DIR`, traced, run ONCE per session: (result, DIR)."""
    out = Path(tempfile.mkdtemp(prefix="fp-answer-", dir="/var/tmp"))
    yield run_experiment(lab_cache, ["--variants", "plain,live", "--workload", "after-boot,after-read",
                                     "--workload-mib", "64"], out / "out"), out / "out"
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.qemu
def test_real_moments_each_have_an_account(answered):
    result, _ = answered
    for b in result["boots"]:
        assert "error" not in b and "moments_error" not in b, b.get("error") or b.get("moments_error")
        assert [m["name"] for m in b["moments"]] == ["after-boot", "after-read"]
        read = b["moments"][1]["workload"]
        assert read["listed_mib"] >= 64 and read["read_mib"] >= 60
        for m in b["moments"]:
            assert m["account"] and m["sample_t_s"] >= m["t_s"]
            assert sum(r["resident_mib"] for r in m["account"]) == pytest.approx(
                m["account_meminfo"]["nonfree_mib"], abs=0.5)
        assert {"after-boot", "after-read"} <= {p["name"] for p in b["phases"]}


@pytest.mark.qemu
def test_real_side_by_side_adds_up_live_has_squashfs_and_dm_plain_none(answered):
    result, _ = answered
    assert [(e["moment"], e["a"], e["b"]) for e in result["side_by_side"]] == [
        ("after-boot", "plain", "live"), ("after-read", "plain", "live")]
    for e in result["side_by_side"]:
        for by in ("subsystem", "layer"):
            c = e[by]
            deltas = sum(r["delta_mib"] for r in c["rows"])
            assert c["nonfree_delta_mib"] == pytest.approx(c["b"]["nonfree_mib"] - c["a"]["nonfree_mib"])
            assert c["residual_mib"] == pytest.approx(c["nonfree_delta_mib"] - deltas)
            assert abs(c["residual_mib"]) < 0.5
        rows = {r["subsystem"]: r for r in e["subsystem"]["rows"]}
        for sub in QUESTION:
            assert rows[sub]["b_mib"] > 0, (e["moment"], sub)
            assert rows[sub]["a_mib"] == 0, (e["moment"], sub)


@pytest.mark.qemu
def test_real_answer_names_both_with_numbers(answered):
    result, _ = answered
    ans = result["answer"]
    assert ans["boot"] == "live" and set(ans["by_moment"]) == {"after-boot", "after-read"}
    for a in ans["by_moment"].values():
        for sub in QUESTION:
            c = a["subsystems"][sub]
            assert c["pages"] > 0
            assert f"{sub} claims {c['pages']:,} pages ({c['mib']:.1f} MiB)" in a["paragraph"]
        assert a["versus_plain"]["nonfree_delta_mib"] > 0


@pytest.mark.qemu
def test_real_ranking_and_files(answered):
    result, out = answered
    rk = result["ranking"]
    assert rk["by_delivery"][0] == "live" and rk["by_nonfree"][0] == "plain"
    for name in ("experiment.json", "side-by-side.csv", "report.html", "plot.png",
                 "live.recording.jsonl", "plain.recording.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "experiment.json").read_text())["answer"]["paragraph"] == result["answer"]["paragraph"]


def test_chain_from_a_root_no_mount_shows():
    """A recorder in its own mount namespace does not see the root mounted after
    switch_root: ext4 on dm live-rw, known by its superblock, still tops the chain
    rootfs.img → squashfs.img (the same data cached at three layers)."""
    from tracer.topology import Topology, double_caching

    t = live.live_topology()
    t["mounts"] = [m for m in t["mounts"] if m["mountpoint"] != "/"]
    t["block_devices"]["dm-0"]["probed_fstype"] = "ext4"
    chains = double_caching(Topology.from_dict(t))
    top = [c for c in chains if c["top"]["dev"] == "254:0"]
    assert top and top[0]["top"]["mountpoints"] == []
    assert "(not mounted)" in top[0]["top"]["layer"]
    assert [lv["dev"] for lv in top[0]["levels"]][:2] == ["7:0", "11:0"]  # rootfs.img, squashfs.img
