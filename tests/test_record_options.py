"""`footprint record`'s numbers: 0, negative, NaN and infinite durations and intervals
are refused with one line and exit status 2, before anything is attached or written."""

from __future__ import annotations

import pytest

from tracer.cli import main


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(args, prog_name="footprint")
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("option", ["-d", "--duration", "--interval", "--inventory-seconds"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "NaN", "inf", "-inf", "1e999", "x", ""])
def test_bad_seconds_are_one_line_exit_2(option, value, tmp_path, capsys):
    out = tmp_path / "rec.jsonl"
    code, err = _run(["record", "-o", str(out), option, value], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("footprint: "), err
    assert "Traceback" not in err and option.lstrip("-")[:3] in err
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--interval", "0.01"), ("--inventory-seconds", "0.05")])
def test_below_the_least_interval_is_refused(option, value, tmp_path, capsys):
    code, err = _run(["record", "-o", str(tmp_path / "r"), option, value], capsys)
    assert code == 2 and "at least" in err, err


def test_good_seconds_are_accepted(monkeypatch, tmp_path, capsys):
    """Valid numbers reach the recorder as floats (its record() is stubbed out here)."""
    from tracer import recorder

    seen = {}
    monkeypatch.setattr(recorder, "record", lambda opts: seen.setdefault("opts", opts) and "duration")
    code, err = _run(["record", "-o", str(tmp_path / "r"), "-d", "2.5", "--interval", "0.05",
                      "--inventory-seconds", "1"], capsys)
    assert code == 0, err
    opts = seen["opts"]
    assert (opts.duration, opts.interval, opts.inventory_seconds) == (2.5, 0.05, 1.0)
