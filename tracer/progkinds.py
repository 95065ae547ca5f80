"""Which kind of BPF program each hot event runs as: tp_btf or a classic tracepoint.

The CO-RE object builds its hot events both ways (FP_HOT_* in bpf/footprint.bpf.c, one
body each). A classic tracepoint's program is skipped whenever any kprobe or tracepoint
program already runs on that CPU, or user space reads or writes a BPF map there (the
per-CPU bpf_prog_active: trace_call_bpf, bpf_disable_instrumentation; 4.x to 6.18); a
tp_btf program (a raw tracepoint typed by BTF, 5.5+) only when it is itself already
running there (prog->active in __bpf_trace_run), and it reads the tracepoint's own
arguments with no trace record filled first. So libbpf loads the tp_btf ones where it can.
"""

from __future__ import annotations

import os

from .errors import FootprintError

HOT_EVENTS = frozenset({"mm_filemap_add_to_page_cache", "mm_filemap_delete_from_page_cache",
                        "mm_page_alloc", "mm_page_free", "kmalloc", "kfree"})
# The hot events an interrupt can fire: each tp_btf program of these has two nested twins
# that run the events the kernel skipped for it (FP_TWINNED_* in bpf/footprint.bpf.c;
# this order is FP_NEST_*'s, their counts' after oom_kills in the stats).
TWINNED_EVENTS = ("mm_page_alloc", "mm_page_free", "kmalloc", "kfree")
PROGRAM_KINDS = ("auto", "tp_btf", "tracepoint")
# tp_btf programs work out a page's pfn from its address within the 1 GiB-aligned vmemmap
# (fp_ctx_pfn in bpf/footprint.bpf.c): every struct page (64 bytes on x86-64) must lie in
# its first GiB.
_STRUCT_PAGE = 64


def plan_program_kinds(p) -> None:
    """Which of loader.Plan p's hot events run as tp_btf programs (p.btf_events), by
    p.programs: auto takes them where they can work (p.btf_fallback says why not),
    tp_btf insists (a one-line error where they cannot), tracepoint keeps every event a
    classic tracepoint. tp_btf needs the libbpf loader (the kernel's BTF) and x86-64 with
    every struct page in the first GiB of the vmemmap. Where they then fail to load,
    programs.LibbpfProgram falls back to the classic ones (auto) and says why."""
    if p.programs not in PROGRAM_KINDS:
        raise FootprintError(f"unknown --programs {p.programs!r}: use one of {', '.join(PROGRAM_KINDS)}")
    why = None
    if p.programs == "tracepoint":
        why = "--programs tracepoint"
    elif p.loader != "libbpf":
        why = "the bcc loader builds classic tracepoints only"
    elif os.uname().machine != "x86_64":
        why = f"pfns from struct page addresses are worked out for x86-64 only, not {os.uname().machine}"
    elif p.max_pfn * _STRUCT_PAGE > 1 << 30:
        why = "struct pages beyond the vmemmap's first GiB (over 64 GiB of physical addresses)"
    if why and p.programs == "tp_btf":
        raise FootprintError(f"--programs tp_btf cannot run here ({why}): use --programs auto")
    p.btf_fallback = why
    p.btf_events = [] if why else [(g, e) for g, e in p.tracepoints if e in HOT_EVENTS]


def kind_of(p, group: str, event: str) -> str:
    """The kind of program event (group, event) of loader.Plan p runs as."""
    return "tp_btf" if (group, event) in p.btf_events else "tracepoint"


def describe(plan: dict) -> str:
    """One line for the report from a recording's plan: how many programs of each kind
    ran, and why no tp_btf where none did ("" for recordings from before tp_btf)."""
    probes = [p for p in plan.get("probes", []) if p.get("active") and isinstance(p.get("probe"), str)]
    kinds = [p["probe"].split(":", 1)[0] for p in probes]
    n_btf = kinds.count("tp_btf")
    if "btf_events" not in plan:
        return ""
    text = f"{n_btf} tp_btf + {kinds.count('tracepoint')} tracepoint programs"
    why = plan.get("btf_fallback")
    return text + (f" (no tp_btf: {why})" if why and not n_btf else "")
