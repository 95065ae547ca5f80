"""Choosing and running the two loaders: libbpf (the CO-RE object built ahead of time)
and bcc (compiled at attach time). The accuracy tests run both (test_tracer_host.py);
these check the choice, the errors, and that the libbpf path needs no bcc at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import bpffiles, loader, programs
from tracer.errors import FootprintError
from tracer.progkinds import TWINNED_EVENTS

REPO = Path(__file__).resolve().parent.parent
FOOTPRINT = [sys.executable, "-m", "tracer"]


@pytest.fixture(scope="module")
def bpf_object():
    """The CO-RE object of this checkout, built (or found up to date) by scripts/build-bpf."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "build-bpf")], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip().splitlines()[-1])
    return str(REPO / "bpf" / "footprint.bpf.o")


# --------------------------------------------------------------- the choice (no BPF)

def test_auto_prefers_libbpf_with_btf_and_object(monkeypatch, tmp_path):
    obj = tmp_path / "footprint.bpf.o"
    obj.write_bytes(b"\x7fELF")
    btf = tmp_path / "vmlinux"
    btf.write_bytes(b"")
    monkeypatch.setenv("FOOTPRINT_BPF_OBJECT", str(obj))
    monkeypatch.setattr(bpffiles, "KERNEL_BTF", str(btf))
    assert loader.choose_loader("auto") == ("libbpf", str(obj))
    assert loader.choose_loader("bcc") == ("bcc", None)
    monkeypatch.setattr(bpffiles, "KERNEL_BTF", str(tmp_path / "none"))
    assert loader.choose_loader("auto") == ("bcc", None)
    monkeypatch.setattr(bpffiles, "KERNEL_BTF", str(btf))
    monkeypatch.setenv("FOOTPRINT_BPF_OBJECT", str(tmp_path / "absent.o"))
    assert loader.choose_loader("auto") == ("bcc", None)


def test_forced_libbpf_says_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("FOOTPRINT_BPF_OBJECT", str(tmp_path / "absent.o"))
    with pytest.raises(FootprintError, match="not built: run scripts/build-bpf"):
        loader.choose_loader("libbpf")
    monkeypatch.setattr(bpffiles, "KERNEL_BTF", str(tmp_path / "none"))
    with pytest.raises(FootprintError, match="needs the kernel's BTF"):
        loader.choose_loader("libbpf")


def test_bcc_source_has_the_shared_logic_inlined():
    src = loader.bpf_source()
    assert '#include "footprint_' not in src
    assert "pfn_set" in src and "enum fp_stat" in src and "BPF_HASH(files" in src


def test_both_frontends_declare_the_maps_the_sampler_reads():
    from tracer.bpfmaps import Maps

    core = (REPO / "bpf" / "footprint.bpf.c").read_text()
    bcc = (REPO / "bpf" / "footprint.c").read_text()
    for name in Maps.NAMES + Maps.OPTIONAL:
        assert f" {name} SEC" in core or f"FP_MAP({name}," in core, name
        assert f"({name}," in bcc or f", {name}," in bcc, name


# --------------------------------------------------------------- the CLI, one line, exit 2

def _one_line_exit_2(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="record refuses non-root before choosing a loader")
def test_record_libbpf_without_object_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, FOOTPRINT_BPF_OBJECT=str(tmp_path / "absent.o"))
    p = subprocess.run(FOOTPRINT + ["record", "--loader", "libbpf", "-o", str(tmp_path / "r.jsonl"),
                                    "-d", "1"], capture_output=True, text=True, env=env, cwd=REPO)
    _one_line_exit_2(p, "scripts/build-bpf")
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="record refuses non-root before choosing a loader")
def test_record_libbpf_without_btf_is_one_line_exit_2(tmp_path):
    code = (f"from tracer import bpffiles; bpffiles.KERNEL_BTF = {str(tmp_path / 'no-btf')!r}; "
            "from tracer.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", code, "record", "--loader", "libbpf",
                        "-o", str(tmp_path / "r.jsonl"), "-d", "1"],
                       capture_output=True, text=True, cwd=REPO)
    _one_line_exit_2(p, "BTF", "--loader bcc")


# --------------------------------------------------------------- libbpf on this kernel

@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")
def test_libbpf_sizes_maps_and_knobs_before_load(bpf_object):
    from tracer.bpfmaps import Map, Maps

    p = loader.plan(sizes=loader.MapSizes(files=4096, stacks=256, stack_depth=12, objs=8192),
                    loader="libbpf")
    prog = programs.Program(p)
    try:
        for name, entries in p.map_entries().items():
            m = Map(prog[name].map_fd)
            assert m.max_entries == entries, (name, m.max_entries, entries)
        assert Map(prog["stacks"].map_fd).value_size == 12 * 8
        kinds = {e: "tp_btf" if (g, e) in p.btf_events else "tracepoint" for g, e in p.tracepoints}
        twins = {f"{t}__{g}__{e}" for t in ("tp_btf_nested", "tp_btf_nested2") for g, e in p.btf_events
                 if e in TWINNED_EVENTS}
        assert set(prog.prog_fds()) == {f"{kinds[e]}__{g}__{e}" for g, e in p.tracepoints} | twins
        assert len(prog.attach_fds()) == len(p.tracepoints) + len(twins)
        assert len(Maps({n: prog[n].map_fd for n in Maps.NAMES}).stats(loader.ST_MAX)) == loader.ST_MAX
    finally:
        prog.close()


POISON_BCC = "import os\nopen(os.environ['FP_BCC_IMPORTED'], 'w').write('imported')\n" \
             "raise ImportError('bcc must not be imported on the libbpf path')\n"


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")
def test_libbpf_path_never_imports_bcc(bpf_object, tmp_path):
    """`record --loader libbpf` with a bcc that refuses to import (and tells on anyone who
    tries) records, hands off to the sampler and ends cleanly."""
    poison = tmp_path / "poison"
    (poison / "bcc").mkdir(parents=True)
    (poison / "bcc" / "__init__.py").write_text(POISON_BCC)
    marker = tmp_path / "bcc-imported"
    env = dict(os.environ, PYTHONPATH=f"{poison}{os.pathsep}{REPO}", FP_BCC_IMPORTED=str(marker))
    rec = tmp_path / "r.jsonl"
    p = subprocess.run(FOOTPRINT + ["record", "--loader", "libbpf", "-o", str(rec), "-d", "2",
                                    "--interval", "0.5", "--no-inventory"],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert not marker.exists(), "something imported bcc"
    lines = [json.loads(line) for line in rec.read_text().splitlines()]
    assert lines[0]["plan"]["loader"] == "libbpf"
    assert any(r.get("stage") == "sampler" for r in lines if r["type"] == "tracer")
    samples = [r for r in lines if r["type"] == "sample"]
    assert len(samples) >= 3 and samples[-1]["stats"]["kernel_pages_allocated"] > 0
    text = subprocess.run(FOOTPRINT + ["report", str(rec)], capture_output=True, text=True,
                          cwd=REPO, check=True).stdout
    assert "loaded by: libbpf" in text


@pytest.mark.bpf
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")
def test_libbpf_load_failure_is_one_line_naming_the_cause(bpf_object):
    """What libbpf logs is captured, not printed: the error names the map it refused."""
    p = loader.plan(loader="libbpf")
    p.max_pfn = 0  # an array of no entries: the kernel refuses it
    with pytest.raises(FootprintError) as err:
        programs.Program(p)
    assert "pfn_state" in str(err.value) and "\n" not in str(err.value), err.value


def test_a_stop_inside_libbpfs_log_callback_is_raised_once_libbpf_returns(monkeypatch):
    """A signal handler runs at Python's next bytecode: while libbpf runs, that is the
    first of its log callback, where a raise would be printed and dropped by ctypes (a
    recorder interrupted then ran on; found under load). The handler hands the exception
    over (raise_after_call) and the libbpf call raises it once it returned."""
    import platform

    from tracer import libbpf

    if platform.machine() != "x86_64":
        pytest.skip("the callback formats through vsnprintf on x86-64 only")

    class Stop(Exception):
        pass

    class Libc:  # the handler "runs" where the callback formats its message
        def vsnprintf(self, buf, n, fmt, args):
            assert libbpf.raise_after_call(sys._getframe(), Stop("SIGINT"))
            return 0

    monkeypatch.setattr(libbpf, "_libc", Libc())
    returned = []

    def libbpf_function():  # C calling the log callback, then returning
        libbpf._print_cb(0, b"libbpf: a warning", None)
        returned.append(True)
        return 0

    with pytest.raises(Stop):
        libbpf._call(libbpf_function)
    assert returned == [True]  # libbpf finished its work first
    assert not libbpf.raise_after_call(sys._getframe(), Stop("elsewhere"))  # raise it there
    libbpf._call(lambda: 0)  # nothing kept


def test_the_stat_numbers_match_the_program():
    """The sampler's names for the program's counters, the epoch it writes and the map's
    size are enum fp_stat's (bpf/footprint_types.h): a stat added in C without its name
    here would shift every later one, and the epoch would land on a counter."""
    import re

    from tracer.bpfmaps import ST_EPOCH
    from tracer.mapsampler import STAT_NAMES

    text = (REPO / "bpf" / "footprint_types.h").read_text()
    body = re.search(r"enum fp_stat \{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    values, n = {}, 0
    for item in (x.strip() for x in body.split(",") if x.strip()):
        name, _, expr = (p.strip() for p in item.partition("="))
        if expr:
            base, _, plus = expr.partition("+")
            n = values[base.strip()] + int(plus or 0)
        values[name] = n
        n += 1
    assert values["ST_EPOCH"] == ST_EPOCH == len(STAT_NAMES)
    assert values["ST_MAX"] == loader.ST_MAX == ST_EPOCH + 1
    assert values["ST_NESTED"] == STAT_NAMES.index(f"nested:{TWINNED_EVENTS[0]}")
