"""The experiment's answer: live vs plain side by side at each moment, the plain-language
answer, the ranking of the boots, and the reports on disk.

Everything is computed from the traced boots' recordings with tracer's public API
(account.build at the sample of each moment, compare.compare, answer.answer,
render_html.render); this module only picks the samples, lays the results out and writes
them. The rows of each account add up to its MemTotal − MemFree, so the per-row
differences add up to the difference in MemTotal − MemFree; the residual is printed.
The 2014 question (what squashfs, device-mapper and loop claim, against a plain disk) is
asked here, not by the product.

    an = analyse(exp, recordings_dir)   # each moment's account; exp.side_by_side, .answer,
                                        # .ranking (exp: vm/results.py Experiment)
    print(text(exp)); write_out(exp, an, out_dir)
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tracer import account as account_mod, answer as answer_mod, compare as compare_mod
from tracer import recording as recording_mod, report as report_mod
from tracer.safe import csv_cell, inert

from .results import Experiment, MomentAccount, as_experiment

# The 2014 question: how much do squashfs, device-mapper and loop claim, against a plain disk.
QUESTION = ("squashfs", "device-mapper", "loop")
MIB = 1 << 20


@dataclass
class Analysis:
    """What the reports are drawn from: each boot's Recording and path, and the Account
    of each (boot name, moment)."""

    recs: dict = field(default_factory=dict)        # boot name -> Recording
    accounts: dict = field(default_factory=dict)    # (boot name, moment) -> Account
    paths: dict = field(default_factory=dict)       # boot name -> recording path


def _plain_json(obj):
    """A product's dict (compare, answer) as plain JSON values (no numpy scalars)."""
    return json.loads(report_mod.dumps_json(obj, pretty=False))


def recording_path(recordings_dir: Path, name: str) -> Path:
    """Where vm.traced.footprint_hook keeps a boot's recording."""
    return Path(recordings_dir) / f"{name}.recording.jsonl"


def analyse(exp: Experiment, recordings_dir: Optional[Path]) -> Analysis:
    """Gives each traced boot's moments their account (`Moment.account`), and `exp` its
    side_by_side, answer and ranking. A boot's recording is the one its hook read
    (`Boot.recording`), else read from `recordings_dir`. Returns the accounts and
    recordings (for the reports)."""
    an = Analysis()
    for b in exp.ok:
        path = recording_path(recordings_dir, b.name) if recordings_dir else None
        if not b.moments or path is None or not path.exists():
            continue
        try:
            rec = b.recording if b.recording is not None else recording_mod.read(str(path))
            for m in b.moments:
                index, why = rec.sample_at(m.t_s)
                acc = account_mod.build(rec, index)
                an.accounts[(b.name, m.name)] = acc
                m.account = MomentAccount(index, acc.t, report_mod.to_json(rec, acc)["account"],
                                          _plain_json(acc.meminfo), why or None)
        except Exception as err:  # noqa: BLE001 - the boot's other figures still count
            b.moments_error = f"recording not readable: {err}"
            continue
        an.recs[b.name] = rec
        an.paths[b.name] = path
    exp.side_by_side = side_by_side(exp, an)
    exp.answer = answer_of(exp, an)
    exp.ranking = ranking(exp)
    return an


def _pairs(exp: Experiment, an: Analysis) -> list[tuple[str, str]]:
    """(plain, other) for every other boot with accounts; plain first in the result."""
    names = [b.name for b in exp.boots if b.name in an.recs]
    if "plain" not in names:
        return []
    return [("plain", n) for n in names if n != "plain"]


def live_name(names: list[str]) -> Optional[str]:
    """The boot set against plain: "live" where it is among `names` (the boots other than
    plain), else the first of them."""
    return "live" if "live" in names else (names[0] if names else None)


def moment_names(result) -> list[str]:
    """The moments measured in any boot of the experiment, in the order first seen."""
    return as_experiment(result).moment_names()


def side_by_side(exp: Experiment, an: Analysis) -> list[dict]:
    """Per moment and pair (plain, other): compare.compare by subsystem and by layer."""
    out = []
    for moment in exp.moment_names():
        for a, b in _pairs(exp, an):
            acc_a, acc_b = an.accounts.get((a, moment)), an.accounts.get((b, moment))
            if acc_a is None or acc_b is None:
                continue
            entry = {"moment": moment, "a": a, "b": b}
            for by in ("subsystem", "layer"):
                entry[by] = _plain_json(compare_mod.compare(acc_a, acc_b, by=by))
            out.append(entry)
    return out


def _live_name(exp: Experiment, an: Analysis) -> Optional[str]:
    return live_name([b for _a, b in _pairs(exp, an)])


def answer_of(exp: Experiment, an: Analysis) -> Optional[dict]:
    """The 2014 question asked of answer.answer(live, plain) right after boot, and at
    every other moment in by_moment."""
    live = _live_name(exp, an)
    if live is None:
        return None
    by_moment = {}
    for moment in exp.moment_names():
        acc_l, acc_p = an.accounts.get((live, moment)), an.accounts.get(("plain", moment))
        if acc_l is not None and acc_p is not None:
            by_moment[moment] = _plain_json(answer_mod.answer(acc_l, acc_p, subsystems=QUESTION,
                                                              against="the plain disk"))
    if not by_moment:
        return None
    first = "after-boot" if "after-boot" in by_moment else next(iter(by_moment))
    return {**by_moment[first], "boot": live, "against": "plain", "moment": first,
            "by_moment": by_moment}


def ranking(result) -> dict:
    """The boots ranked by memory in use after boot (MemTotal − MemFree; procps 4 used)
    and by delivery size: the 2014 trade-off."""
    exp = as_experiment(result)
    rows = []
    for b in exp.ok:
        row = {"name": b.name, "nonfree_mib": b.nonfree_mib, "used_mib": b.figure("used_mib"),
               "delivery_mib": b.figure("delivery_mib"), "rootfs_mib": b.figure("rootfs_mib"),
               "moments": {m.name: {"nonfree_mib": m.in_use_mib, "used_mib": m.in_use_used_mib,
                                    **({"question_mib": {s: m.account.mib(s) for s in QUESTION}}
                                       if m.account and m.account.rows else {})}
                           for m in b.moments or []}}
        rows.append(row)
    rows.sort(key=lambda r: r["nonfree_mib"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i

    def order(key):
        return [r["name"] for r in sorted(rows, key=lambda r: (r[key] is None, r[key] or 0))]

    return {"by": "nonfree_mib after boot (MemTotal - MemFree), smallest first", "rows": rows,
            "by_nonfree": order("nonfree_mib"), "by_used": order("used_mib"),
            "by_delivery": order("delivery_mib")}


# --- text ------------------------------------------------------------------------------


def text(result) -> str:
    """Every table of `footprint experiment --full` after the boots' table: the moments,
    live − plain per moment by subsystem and by layer, the answer, the ranking, the files."""
    exp = as_experiment(result)
    out = []
    moments_t = moments_table(exp)
    if moments_t:
        out += ["", "Moments (MiB): in use at each moment and what squashfs, device-mapper and loop claim",
                moments_t]
    if moments_t and not exp.side_by_side:
        out += ["", "No side by side: it needs the recordings of a plain and another traced boot "
                "(boot without --untraced; a boot whose recorder failed says why in its tracer_error)."]
    for e in exp.side_by_side or []:
        sub, lay = e["subsystem"], e["layer"]
        out += ["", f"== {e['moment']}: {inert(e['a'])} vs {inert(e['b'])} (MiB) ==", "",
                compare_mod.text(sub, e["a"], e["b"]).rstrip(), "",
                compare_mod.text(lay, e["a"], e["b"]).rstrip(), "",
                f"{e['moment']}: the per-subsystem differences add up to the difference in MemTotal − MemFree: "
                f"{inert(e['b'])} − {inert(e['a'])} = {sub['nonfree_delta_mib']:+.1f} MiB in use, sum of the "
                f"differences {sub['sum_of_deltas_mib']:+.1f} MiB, residual {sub['residual_mib']:+.1f} MiB "
                f"(by layer: residual {lay['residual_mib']:+.1f} MiB)."]
    ans = exp.answer
    if ans:
        out += ["", f"The answer ({inert(ans['boot'])} against {inert(ans['against'])}):"]
        for moment, a in ans["by_moment"].items():
            out += ["", f"{moment}: {a['paragraph']}"]
    from .matrix import text as matrix_text

    mx = matrix_text(exp.squashfs_matrix or [])
    if mx:
        out += ["", "squashfs matrix: squashfs's own memory against CPUs × block size × compressor", mx]
    rk = ranking_table(exp)
    if rk:
        out += ["", "Ranking: memory in use after boot against delivery size (the 2014 trade-off)", rk]
    files = exp.files
    if files:
        out += ["", f"Written to {inert(os.path.dirname(files['json']))}: "
                + ", ".join(inert(os.path.basename(p)) for p in files.values())]
    return "\n".join(out)


def moments_table(result) -> str:
    """Per moment and boot: in use, used, and what the question's subsystems claim."""
    exp = as_experiment(result)
    lines = []
    head = f"{'moment':<13}{'boot':<16}{'MemTotal-MemFree':>17}{'used':>8}{'squashfs':>10}{'dm':>8}{'loop':>8}"
    for moment in exp.moment_names():
        for b in exp.boots:
            m = next((x for x in b.moments or [] if x.name == moment), None)
            if m is None:
                continue
            q = {s: m.account.mib(s) for s in QUESTION} if m.account and m.account.rows else None
            cells = "".join(f"{q[s]:>{w}.1f}" if q else f"{'-':>{w}}"
                            for s, w in zip(QUESTION, (10, 8, 8)))
            lines.append(f"{moment:<13}{inert(b.name)[:15]:<16}{m.in_use_mib:>17.1f}"
                         f"{m.in_use_used_mib:>8.1f}{cells}")
    return "\n".join([head] + lines) if lines else ""


def ranking_table(result) -> str:
    """The ranking (`ranking`) as a table, the 2014 boots below it."""
    exp = as_experiment(result)
    rk = exp.ranking
    if not rk or not rk["rows"]:
        return ""
    extra = [m for m in exp.moment_names() if m != "after-boot"]
    head = (f"{'rank':<6}{'boot':<16}{'MemTotal-MemFree':>17}{'used':>10}{'delivery':>10}{'rootfs':>8}"
            + "".join(f"{m:>14}" for m in extra))
    lines = [head, f"{'':<22}{'after boot':>17}{'procps 4':>10}{'MiB':>10}{'df MiB':>8}"
             + "".join(f"{'in use':>14}" for _ in extra)]
    for r in rk["rows"]:
        cells = "".join(f"{r['moments'][m]['nonfree_mib']:>14.1f}" if m in r["moments"] else f"{'-':>14}"
                        for m in extra)
        rootfs = f"{r['rootfs_mib']:>8.0f}" if r["rootfs_mib"] is not None else f"{'-':>8}"
        lines.append(f"{r['rank']:<6}{inert(r['name'])[:15]:<16}{r['nonfree_mib']:>17.1f}{r['used_mib']:>10.1f}"
                     f"{r['delivery_mib']:>10.1f}{rootfs}{cells}")
    for s in (exp.seed or {}).get("boots", []):
        label = "LiveCD 2014" if s["name"].startswith("LiveCD") else "plain 2014"
        d = f"{s['delivery_mib']:>10.0f}" if s["delivery_mib"] is not None else f"{'-':>10}"
        lines.append(f"{'':<6}{label:<16}{s['nonfree_mib']:>17.0f}{'-':>10}{d}{s['rootfs_mib']:>8.0f}")
    by_d = rk["by_delivery"]
    lines.append(f"smallest delivery first: {', '.join(inert(n) for n in by_d)}; "
                 f"least memory first: {', '.join(inert(n) for n in rk['by_nonfree'])}.")
    return "\n".join(lines)


# --- on disk ---------------------------------------------------------------------------


def csv_text(result) -> str:
    """The per-moment side-by-side table: one line per moment, pair, grouping and row, plus
    the in-use, sum-of-rows and residual lines. Names made inert and never read as
    formulas (as footprint's CSV)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["moment", "a", "b", "by", "subsystem", "layer", "kind", "a_mib", "b_mib", "delta_mib"])
    for e in as_experiment(result).side_by_side or []:
        for by in ("subsystem", "layer"):
            c = e[by]
            pre = [e["moment"], csv_cell(e["a"]), csv_cell(e["b"]), by]
            w.writerow(pre + ["in use (MemTotal-MemFree)", "", "", c["a"]["nonfree_mib"], c["b"]["nonfree_mib"],
                              c["nonfree_delta_mib"]])
            for r in c["rows"]:
                w.writerow(pre + [csv_cell(r["subsystem"]), csv_cell(r.get("layer", "")), csv_cell(r.get("kind", "")),
                                  r["a_mib"], r["b_mib"], r["delta_mib"]])
            w.writerow(pre + ["sum of rows", "", "", sum(r["a_mib"] for r in c["rows"]),
                              sum(r["b_mib"] for r in c["rows"]), c["sum_of_deltas_mib"]])
            w.writerow(pre + ["residual (in-use delta - sum)", "", "", "", "", c["residual_mib"]])
    return buf.getvalue()


def write_out(exp: Experiment, an: Analysis, out: Path) -> dict:
    """experiment.json, side-by-side.csv, plot.png and report.html (the live boot with the
    plain one to compare, at its last moment) plus report-<moment>.html per moment, each
    written as footprint writes its outputs (tracer/outfile.py: mode 0600, renamed into
    place, never through a symlink). Recordings are copied in unless they are there
    already (<name>.recording.jsonl). Returns {what: path}."""
    from tracer import outfile, render_html

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {}

    def put(what: str, name: str, data: bytes) -> None:
        outfile.write(str(out / name), data)
        files[what] = str(out / name)

    for name, path in an.paths.items():
        dest = recording_path(out, name)
        put(f"recording {name}", dest.name, Path(path).read_bytes())
    put("side-by-side csv", "side-by-side.csv", csv_text(exp).encode())
    live = _live_name(exp, an)
    if live and live in an.recs:
        rec_l, rec_p = an.recs[live], an.recs.get("plain")
        put("plot", "plot.png", render_html.plot_png(rec_l))
        moments = [m for m in exp.moment_names() if (live, m) in an.accounts]
        for moment in moments:
            plain = ((rec_p, an.accounts[("plain", moment)])
                     if rec_p is not None and ("plain", moment) in an.accounts else None)
            page = render_html.render(rec_l, an.accounts[(live, moment)], plain=plain).encode("utf-8")
            put(f"report {moment}", f"report-{moment}.html", page)
            if moment == moments[-1]:
                put("report", "report.html", page)
    files["json"] = str(out / "experiment.json")
    exp.files = files
    put("json", "experiment.json", (report_mod.dumps_json(exp.to_dict(), pretty=True) + "\n").encode())
    return files


def default_out(cache_dir: Optional[os.PathLike]) -> Path:
    """A timestamped directory under the cache (next to the images)."""
    import time

    from . import cache as C

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return C.cache_root(cache_dir).parent / "experiments" / stamp
