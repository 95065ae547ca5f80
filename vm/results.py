"""The experiment's results as typed objects: a boot, the moments it was measured at, the
account of each moment, and the experiment around them.

`footprint experiment --json` and experiment.json are these objects' `to_dict()`, key for
key in the order the lab has always written them, so a saved run reads back with
`Experiment.from_dict(json.load(f))` and draws the same screen (vm/screen.py).

    exp = Experiment(boots=[Boot(name="plain", figures={...}, moments=[Moment(...)])], seed=SEED)
    exp.boot("plain").moment("after-read").account.rows      # the account's rows at that moment
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# Keys of a boot's dict that are not its figures (the figures are everything else, in order).
_BOOT_KEYS = ("name", "error", "moments", "moments_error", "extra", "traced")
# What a traced boot's hook adds at the top level (vm/experiment.py boot_and_measure).
_TRACE_KEYS = ("account", "phases", "tracer", "tracer_error")


@dataclass
class MomentAccount:
    """The account of one moment, built on the host from the boot's recording at the first
    sample taken at or after the moment's mark (`Recording.sample_at`)."""

    sample_index: int
    sample_t_s: float
    rows: list[dict]             # the account's rows, as `footprint report --json` "account"
    meminfo: dict                # its reconciliation with /proc/meminfo
    note: Optional[str] = None   # why the sample is not after the mark, where it is not

    def mib(self, subsystem: str) -> float:
        """Resident MiB the account gives `subsystem` (0.0 where it has no row)."""
        return sum(r["resident_mib"] for r in self.rows if r["subsystem"] == subsystem)


@dataclass
class Moment:
    """A moment a boot was measured at (vm/workloads.py): its mark's boottime, what the
    guest's /proc/meminfo and `free -m` said right after it, the workload that led to it,
    and, for a traced boot, the account at that moment."""

    name: str
    t_s: float
    nonfree_mib: float           # MemTotal − MemFree
    used_mib: float              # MemTotal − MemAvailable (procps 4 "used")
    workload: Optional[dict] = None
    meminfo: Optional[dict] = None
    free_m: Optional[str] = None
    account: Optional[MomentAccount] = None

    @property
    def in_use_mib(self) -> float:
        """MemTotal − MemFree at the instant the moment's numbers describe: its account's
        sample on a traced boot (the rows add up to it; seconds after the mark, with the
        reader of a pinned account charged to the tracer), else right after the mark."""
        return self._at_sample("nonfree_mib", self.nonfree_mib)

    @property
    def in_use_used_mib(self) -> float:
        """MemTotal − MemAvailable at that same instant (see in_use_mib)."""
        return self._at_sample("used_mib", self.used_mib)

    def _at_sample(self, key: str, default: float) -> float:
        value = (self.account.meminfo or {}).get(key) if self.account is not None else None
        return value if isinstance(value, (int, float)) else default

    def to_dict(self) -> dict:
        """The moment as experiment.json has it (fields never measured are left out)."""
        out: dict[str, Any] = {"name": self.name, "t_s": self.t_s}
        for key in ("workload", "meminfo"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update({"nonfree_mib": self.nonfree_mib, "used_mib": self.used_mib})
        if self.free_m is not None:
            out["free_m"] = self.free_m
        a = self.account
        if a is not None:
            out.update({"sample_index": a.sample_index, "sample_t_s": a.sample_t_s,
                        "account": a.rows, "account_meminfo": a.meminfo})
            if a.note:
                out["note"] = a.note
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Moment":
        """The inverse of `to_dict`."""
        acc = None
        if d.get("account") is not None:
            acc = MomentAccount(d.get("sample_index", -1), d.get("sample_t_s", d["t_s"]), d["account"],
                                d.get("account_meminfo") or {}, d.get("note"))
        return cls(d["name"], d["t_s"], d["nonfree_mib"], d["used_mib"], d.get("workload"),
                   d.get("meminfo"), d.get("free_m"), acc)


@dataclass
class Boot:
    """One boot of the experiment: how it booted and what was measured right after boot
    (`figures`: delivery size, boot seconds, accel, df, free -m, meminfo … as
    vm/experiment.py collects them), its moments, the hooks' results, and for a traced
    boot the recorder's state and the account after boot (`trace`). A boot that failed
    has only its `error`. `recording` (the boot's recording, read once on the host) is
    not part of the dict."""

    name: str
    error: Optional[str] = None
    figures: dict = field(default_factory=dict)
    moments: Optional[list[Moment]] = None
    moments_error: Optional[str] = None
    extra: Optional[dict] = None
    traced: Optional[bool] = None
    trace: dict = field(default_factory=dict)
    recording: Any = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """Whether the boot came up and was measured."""
        return self.error is None

    def figure(self, key: str, default=None):
        """One of the figures (e.g. "nonfree_mib", "kernel"), or `default`."""
        return self.figures.get(key, default)

    @property
    def nonfree_mib(self) -> float:
        """MemTotal − MemFree right after boot (2014's free -m "used")."""
        return self.figures["nonfree_mib"]

    @property
    def tracer(self) -> dict:
        """The recorder's state in the guest (vm/traced.py recorder_state), or {}."""
        return self.trace.get("tracer") or {}

    @property
    def tracer_error(self) -> Optional[str]:
        """Why a traced boot has no recording, or None."""
        return self.trace.get("tracer_error")

    def moment(self, name: str) -> Optional[Moment]:
        """The moment called `name`, or None where this boot was not measured at it."""
        return next((m for m in self.moments or [] if m.name == name), None)

    def to_dict(self) -> dict:
        """The boot as experiment.json has it."""
        out: dict[str, Any] = {"name": self.name}
        if self.error is not None:
            out["error"] = self.error
        out.update(self.figures)
        if self.moments is not None:
            out["moments"] = [m.to_dict() for m in self.moments]
        if self.moments_error is not None:
            out["moments_error"] = self.moments_error
        if self.extra is not None:
            out["extra"] = self.extra
        if self.traced is not None:
            out["traced"] = self.traced
        out.update(self.trace)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Boot":
        """The inverse of `to_dict`."""
        figures = {k: v for k, v in d.items() if k not in _BOOT_KEYS and k not in _TRACE_KEYS}
        moments = [Moment.from_dict(m) for m in d["moments"]] if d.get("moments") is not None else None
        return cls(d["name"], d.get("error"), figures, moments, d.get("moments_error"), d.get("extra"),
                   d.get("traced"), {k: d[k] for k in _TRACE_KEYS if k in d})


@dataclass
class Experiment:
    """The experiment: its boots in boot order, the 2014 seed, and once analysed
    (vm/sidebyside.py) live − plain side by side per moment, the answer, the ranking and
    the files written."""

    boots: list[Boot]
    seed: dict
    side_by_side: Optional[list[dict]] = None
    answer: Optional[dict] = None
    ranking: Optional[dict] = None
    files: Optional[dict] = None
    squashfs_matrix: Optional[list] = None  # vm/matrix.py rows_of: formula beside measurement

    @property
    def ok(self) -> list[Boot]:
        """The boots that came up."""
        return [b for b in self.boots if b.ok]

    def boot(self, name: str) -> Optional[Boot]:
        """The boot called `name` that came up, or None."""
        return next((b for b in self.ok if b.name == name), None)

    def moment_names(self) -> list[str]:
        """The moments measured in any boot, in the order first seen."""
        seen: list[str] = []
        for b in self.boots:
            for m in b.moments or []:
                if m.name not in seen:
                    seen.append(m.name)
        return seen

    def to_dict(self) -> dict:
        """What `footprint experiment --json` prints and experiment.json keeps."""
        out: dict[str, Any] = {"boots": [b.to_dict() for b in self.boots], "seed": self.seed}
        if self.side_by_side is not None:  # analysed: the answer is there, null or not
            out.update({"side_by_side": self.side_by_side, "answer": self.answer})
        for key in ("ranking", "squashfs_matrix", "files"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        """The inverse of `to_dict` (a saved experiment.json)."""
        return cls([Boot.from_dict(b) for b in d["boots"]], d["seed"], d.get("side_by_side"),
                   d.get("answer"), d.get("ranking"), d.get("files"), d.get("squashfs_matrix"))


def as_experiment(result) -> Experiment:
    """`result` as an Experiment: itself, or a dict as `to_dict` made it."""
    return result if isinstance(result, Experiment) else Experiment.from_dict(result)
