"""Two accounts side by side (e.g. a plain disk boot A and a live boot B).

Each account's rows add up to its MemTotal − MemFree, so the per-row differences B − A
add up to the difference in MemTotal − MemFree: the residual line shows that it does
(0.0 up to float rounding) rather than asking the reader to trust it. The unattributed
rows of both are ordinary rows here, so what neither account explains is in the table.

Rows that exist on one side only (layers are named after devices: "ext4 on vda" versus
"ext4 on dm live-rw") appear with 0 on the other side.
"""

from __future__ import annotations

from .account import Account
from .recording import Recording
from .report import fit, records, summary
from . import safe
from .fold import fold, other_label
from .safe import inert

KEYS = {"subsystem": ["subsystem"], "layer": ["subsystem", "layer", "kind"]}


def compare(acc_a: Account, acc_b: Account, by: str = "subsystem",
            rec_a: Recording | None = None, rec_b: Recording | None = None) -> dict:
    """{"a": summary, "b": summary, "rows": [{subsystem, layer?, kind?, a_mib, b_mib,
    delta_mib}], "nonfree_delta_mib", "sum_of_deltas_mib", "residual_mib", ...}.
    Rows are ordered by |delta|, largest first."""
    if by not in KEYS:
        raise ValueError(f"by must be one of {sorted(KEYS)}, not {by!r}")
    keys = KEYS[by]
    a = acc_a.by(by).set_index(keys)["resident_mib"]
    b = acc_b.by(by).set_index(keys)["resident_mib"]
    both = a.index.union(b.index, sort=False)
    a, b = a.reindex(both, fill_value=0.0), b.reindex(both, fill_value=0.0)
    table = (a.rename("a_mib").to_frame().join(b.rename("b_mib")).reset_index())
    table["delta_mib"] = table["b_mib"] - table["a_mib"]
    table = table.reindex(table["delta_mib"].abs().sort_values(ascending=False, kind="stable").index)
    nonfree_delta = acc_b.meminfo["nonfree_mib"] - acc_a.meminfo["nonfree_mib"]
    sum_of_deltas = float(table["delta_mib"].sum())
    return {
        "a": _side(acc_a, rec_a),
        "b": _side(acc_b, rec_b),
        "by": by,
        "rows": records(table[[*keys, "a_mib", "b_mib", "delta_mib"]]),
        "nonfree_delta_mib": nonfree_delta,
        "used_delta_mib": acc_b.meminfo["used_mib"] - acc_a.meminfo["used_mib"],
        "sum_of_deltas_mib": sum_of_deltas,
        "residual_mib": nonfree_delta - sum_of_deltas,
        "unattributed_mib": {"a": acc_a.meminfo["unattributed_mib"],
                             "b": acc_b.meminfo["unattributed_mib"]},
    }


def _side(acc: Account, rec: Recording | None) -> dict:
    """What one side's numbers are: its reconciliation and, given the recording, where
    it came from."""
    out = {k: acc.meminfo[k] for k in ("memtotal_mib", "nonfree_mib", "used_mib", "accounted_mib",
                                       "unattributed_mib", "unattributed_pct")}
    out["t"] = acc.t
    if rec is not None:
        out.update(summary(rec, acc))
    return out


def text(cmp: dict, label_a: str = "A", label_b: str = "B", all_rows: bool = False) -> str:
    """A table that reads like `free -m`: MiB, one row per subsystem (or layer); the
    differences under 1 MiB folded into one "other (N rows)" line unless `all_rows`."""
    a, b = cmp["a"], cmp["b"]
    layer = cmp["by"] == "layer"
    name_w = 70 if layer else 32
    la, lb = fit(inert(label_a), 11), fit(inert(label_b), 11)
    head = f"{'MiB':<{name_w}}{la:>12}{lb:>12}{'B - A':>12}"
    out = []
    if a.get("path") or b.get("path"):
        out.append(f"A: {inert(a.get('path'))}  ({a.get('samples', '?')} samples, kernel {inert(a.get('kernel'))})")
        out.append(f"B: {inert(b.get('path'))}  ({b.get('samples', '?')} samples, kernel {inert(b.get('kernel'))})")
        out.append("")
    out.append(head)

    def line(name, x, y, d=None):
        d = y - x if d is None else d
        cells = "".join(f"{v:12.1f}" if v is not None else f"{'':12}" for v in (x, y))
        return f"{fit(name, name_w - 1):<{name_w}}{cells}{d:+12.1f}"

    out.append(line("total (MemTotal)", a["memtotal_mib"], b["memtotal_mib"]))
    out.append(line("in use (MemTotal-MemFree)", a["nonfree_mib"], b["nonfree_mib"]))
    out.append(line("used (MemTotal-MemAvailable)", a["used_mib"], b["used_mib"]))
    out.append("")
    shown, rest = (cmp["rows"], []) if all_rows else fold(cmp["rows"], lambda r: r["delta_mib"])
    for r in shown:
        name = inert(r["subsystem"])
        if layer:
            name = f"{name:<22}{inert(r['layer'])} ({inert(r['kind'])})"
        out.append(line(name, r["a_mib"], r["b_mib"], r["delta_mib"]))
    if rest:
        out.append(line(other_label(rest), sum(r["a_mib"] for r in rest),
                        sum(r["b_mib"] for r in rest), sum(r["delta_mib"] for r in rest)))
    out.append("-" * (name_w + 36))
    out.append(line("sum of rows", sum(r["a_mib"] for r in cmp["rows"]),
                    sum(r["b_mib"] for r in cmp["rows"]), cmp["sum_of_deltas_mib"]))
    out.append(line("residual (in-use delta - sum)", None, None, cmp["residual_mib"]))
    out.append(f"unattributed: A {cmp['unattributed_mib']['a']:.1f} MiB ({a['unattributed_pct']:.1f} %), "
               f"B {cmp['unattributed_mib']['b']:.1f} MiB ({b['unattributed_pct']:.1f} %)")
    if abs(a["memtotal_mib"] - b["memtotal_mib"]) > 0.01 * max(a["memtotal_mib"], b["memtotal_mib"]):
        out.append("note: MemTotal differs: the machines differ in RAM, so caches and free memory "
                   "are not comparable one to one")
    return "\n".join(out) + "\n"


def to_csv(cmp: dict) -> str:
    """The rows as CSV, names inert and never read as formulas."""
    import pandas as pd

    return safe.to_csv(pd.DataFrame(cmp["rows"]))
