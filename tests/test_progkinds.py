"""The hot events as tp_btf programs (libbpf, where the kernel has BTF) against the same
logic on classic tracepoints: the pfns they work out from struct page addresses are the
trace record's, the fallback and the choice are named, and the report says which kind
ran (tracer/progkinds.py, FP_HOT_* in bpf/footprint.bpf.c)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cachestat_pages
from tracer import loader, programs
from tracer.progkinds import HOT_EVENTS, plan_program_kinds
from tracer.bpfmaps import Maps
from tracer.errors import FootprintError
from tracer.recorder import STAT_NAMES

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-m", "tracer"]
needs_bpf = [pytest.mark.bpf, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")]


@pytest.fixture(scope="module")
def bpf_object():
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-bpf")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1])


def _load(kind: str):
    p = loader.plan(loader="libbpf", slab="off", programs=kind)
    prog = programs.Program(p)
    return p, prog, Maps({n: prog[n].map_fd for n in Maps.NAMES})


def test_tp_btf_refused_where_it_cannot_work_is_one_line():
    p = loader.Plan(tracefs="", kernel="", headers=None, max_pfn=1 << 25, sizes=loader.MapSizes(),
                    tracepoints=[("kmem", "mm_page_alloc")], loader="libbpf", programs="tp_btf")
    with pytest.raises(FootprintError, match="first GiB") as err:
        plan_program_kinds(p)
    assert "\n" not in str(err.value)
    p.programs = "auto"
    plan_program_kinds(p)
    assert p.btf_events == [] and "first GiB" in p.btf_fallback
    p.max_pfn, p.loader = 1 << 20, "bcc"
    plan_program_kinds(p)
    assert p.btf_events == [] and "bcc" in p.btf_fallback


@pytest.mark.parametrize("kind", ["tp_btf", "tracepoint"])
def test_deletes_find_the_pages_their_adds_marked(tmp_path, bpf_object, kind):
    """A file read cold, then dropped from the cache: every delete must find the pfn its
    add marked (else it counts as a page there before attach). The tp_btf programs work
    pfns out from struct page addresses, the tracepoints take the trace record's: both
    must give the kernel's count (cachestat) and lose none."""
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF")
    f = Path("/var/tmp") / f"fp-kinds-{os.getpid()}"
    f.write_bytes(os.urandom(1 << 20) * 32)
    try:
        os.sync()
        os.posix_fadvise(os.open(f, os.O_RDONLY), 0, 0, os.POSIX_FADV_DONTNEED)
        p, prog, maps = _load(kind)
        try:
            assert [e for _, e in p.btf_events] == ([] if kind == "tracepoint" else
                                                    [e for _, e in p.tracepoints if e in HOT_EVENTS])
            with open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass
            st = f.stat()
            dev = os.major(st.st_dev) << 20 | os.minor(st.st_dev)
            truth = cachestat_pages(f)
            read = maps.file_counters(dev, st.st_ino)
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            dropped = maps.file_counters(dev, st.st_ino)
            stats = dict(zip(STAT_NAMES, maps.stats(len(STAT_NAMES))))
        finally:
            prog.close()
    finally:
        f.unlink()
    assert truth == 8192 and read[0] == truth, (read, truth)
    # DONTNEED on a clean, unmapped file drops every page: each delete must find its add.
    assert dropped[0] == 0 and dropped[3] == dropped[2] == truth, dropped
    assert dropped[4] == 0, ("deletes that missed their add's pfn", dropped)
    assert stats["pfn_out_of_range"] == 0, stats


@pytest.mark.parametrize("kind", ["auto", "tracepoint"])
def test_report_names_the_kind_of_programs_that_ran(tmp_path, bpf_object, kind):
    if os.geteuid() != 0:
        pytest.skip("needs root to load BPF")
    rec = tmp_path / "r.jsonl"
    subprocess.run(FOOTPRINT + ["record", "-o", str(rec), "-d", "1", "--no-inventory",
                                "--loader", "libbpf", "--programs", kind],
                   check=True, capture_output=True, cwd=REPO)
    text = subprocess.run(FOOTPRINT + ["report", str(rec)], check=True, capture_output=True,
                          text=True, cwd=REPO).stdout
    report = json.loads(subprocess.run(FOOTPRINT + ["report", "--json", str(rec)], check=True,
                                       capture_output=True, text=True, cwd=REPO).stdout)
    probes = {p["probe"] for p in report["probes"] if p.get("active")}
    line = next(ln for ln in text.splitlines() if ln.startswith("loaded by:"))
    if kind == "auto":
        assert "loaded by: libbpf (6 tp_btf + " in line, line
        assert report["recording"]["programs"].startswith("6 tp_btf + ")
        assert "tp_btf:kmem:mm_page_alloc" in probes
    else:
        assert "(0 tp_btf + " in line and "no tp_btf: --programs tracepoint" in line, line
        assert "tracepoint:kmem:mm_page_alloc" in probes
