"""`footprint experiment`'s first screen, drawn from a saved real run (tests/data/
experiment-real.json: a plain and a live boot under TCG, traced, three moments; the
bulky raw fields trimmed)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from vm import screen as S

REAL = Path(__file__).parent / "data" / "experiment-real.json"


@pytest.fixture
def real() -> dict:
    return json.loads(REAL.read_text())


def test_one_screen(real):
    lines = S.screen(real).splitlines()
    assert len(lines) <= 60 and max(len(x) for x in lines) <= 100


def test_2014_beside_today(real):
    text = S.screen(real)
    head = next(x for x in text.splitlines() if "2014 LiveCD" in x)
    assert "today live" in head and "today plain" in head
    in_use = next(x for x in text.splitlines() if x.startswith("in use MemTotal−MemFree")).split()
    live, plain = (b for b in sorted(real["boots"], key=lambda b: b["name"] != "live"))
    assert in_use[-4:] == ["626", "192", f"{live['nonfree_mib']:.0f}", f"{plain['nonfree_mib']:.0f}"]


def test_moments_table_has_the_question_columns(real):
    lines = S.screen(real).splitlines()
    head = next(x for x in lines if x.startswith("moment (MiB)"))
    for col in ("in use", "squashfs", "dm", "loop", "iso9660", "ramfs/COW", "same data"):
        assert col in head
    live_write = next(x for i, x in enumerate(lines) if x.split()[:1] == ["live"]
                      and lines[i - 1].startswith("after-write")).split()
    moment = next(m for b in real["boots"] if b["name"] == "live" for m in b["moments"]
                  if m["name"] == "after-write")
    ramfs = sum(r["resident_mib"] for r in moment["account"] if r["subsystem"] == "ramfs")
    assert float(live_write[6]) == pytest.approx(ramfs, abs=0.051) and ramfs > 100  # the COW


def test_a_moment_is_one_instant_on_the_screen(real):
    """The moments table's in-use is that of the account its columns come from (not the
    guest's meminfo read right after the mark, seconds earlier): its live − plain is the
    difference table's in-use line, and the answer's after-boot figures are its own."""
    lines = S.screen(real).splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("moment (MiB)"))
    shown, moment = {}, None
    for x in lines[start + 1:]:
        if x.startswith("same data:"):
            break
        words = x.split()
        if not x.startswith(" "):
            moment, words = words[0], words[1:]
        shown[(moment, words[0])] = float(words[1])
    assert len(shown) == 6, shown
    for b in real["boots"]:
        for m in b["moments"]:
            assert shown[(m["name"], b["name"])] == pytest.approx(m["account_meminfo"]["nonfree_mib"], abs=0.51)
    for e in real["side_by_side"]:
        delta = shown[(e["moment"], "live")] - shown[(e["moment"], "plain")]
        assert delta == pytest.approx(e["subsystem"]["nonfree_delta_mib"], abs=1.01)
    first = S.answer_sentences(real)[0]
    assert f"{shown[('after-boot', 'live')]:.0f} MiB in use" in first
    assert f"plain {shown[('after-boot', 'plain')]:.0f} MiB" in first


def test_differences_fold_small_rows_and_the_sums_stay_exact(real):
    lines = S.screen(real).splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("live − plain (MiB)"))
    end = next(i for i, x in enumerate(lines) if x.startswith("residual (in use − rows)"))
    table = lines[start + 1:end + 1]
    assert any(x.startswith("other (") for x in table)
    nums = lambda x: [float(v) for v in re.findall(r"[+-]\d+\.\d", x)]  # noqa: E731
    in_use = nums(table[0])
    rows = [nums(x) for x in table[1:]]  # every row, the other line and the residual
    for col, e in enumerate(real["side_by_side"]):
        assert in_use[col] == pytest.approx(e["subsystem"]["nonfree_delta_mib"], abs=0.051)
        # the shown rows, "other" and the residual add up to the in-use difference
        # (each printed to 0.1: allow the rounding of every line)
        assert sum(r[col] for r in rows) == pytest.approx(in_use[col], abs=0.05 * (len(rows) + 1))


def test_the_answer_is_five_short_sentences_with_numbers(real):
    sentences = S.answer_sentences(real)
    assert 1 <= len(sentences) <= 5
    for s in sentences:
        assert re.search(r"\d", s) and len(s) < 200
    assert "+434" in sentences[0]  # 2014's difference beside today's
    assert "3 layers" in sentences[2] and "ramfs" in sentences[3]


def test_names_from_the_result_are_inert(real):
    bad = copy.deepcopy(real)
    evil = "live\x1b[2J\nline2"
    for b in bad["boots"]:
        if b["name"] == "live":
            b["name"] = evil
    for e in bad["side_by_side"]:
        e["b"] = evil
        e["subsystem"]["rows"][0]["subsystem"] = "sq\x1b]0;x\x07"
    bad["answer"]["boot"] = evil
    text = S.screen(bad)
    assert "\x1b" not in text and "\x07" not in text
    assert not any(x.startswith("line2") for x in text.splitlines())


def test_a_failed_boot_still_gives_a_screen(real):
    part = copy.deepcopy(real)
    part["boots"] = [b for b in part["boots"] if b["name"] == "plain"] + [{"name": "live", "error": "timeout"}]
    part["side_by_side"], part["answer"] = [], None
    text = S.screen(part)
    assert "live FAILED: timeout" in text and len(text.splitlines()) <= 60


def test_a_variant_beside_the_live_boot_gets_its_column(real, monkeypatch):
    """The place the live-build lab plugs into: BESIDE_LIVE names a variant whose
    figures get a column between today's live and plain boots."""
    extra = copy.deepcopy(next(b for b in real["boots"] if b["name"] == "live"))
    extra["name"], extra["nonfree_mib"] = "live-build", 777.0
    real["boots"].append(extra)
    assert "live-bu" not in S.screen(real).splitlines()[2]
    monkeypatch.setattr(S, "BESIDE_LIVE", ["live-build"])
    lines = S.screen(real).splitlines()
    head = lines[2]
    assert head.index("today live") < head.index("today live-bu") < head.index("today plain")
    in_use = next(x for x in lines if x.startswith("in use MemTotal−MemFree"))
    assert in_use.split()[-2] == "777" and max(len(x) for x in lines) <= S.WIDTH
