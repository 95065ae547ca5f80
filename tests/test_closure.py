"""The early-boot recorder's files (tracer.closure) and its entry (tracer.boot), on the host:
what module-setup.sh would put into an initramfs, checked against what a real recording
loads (PYTHONPROFILEIMPORTTIME through the exec into the sampler: an independent view)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def closure(cwd: Path, where: Path) -> tuple[dict, list[str]]:
    p = subprocess.run([sys.executable, "-m", "tracer.closure"], capture_output=True, text=True,
                       cwd=cwd, env=dict(os.environ, PYTHONPATH=str(where)), timeout=300)
    assert p.returncode == 0, p.stderr
    head, _, tail = p.stdout.partition("\n--\n")
    env = dict(line.split("=", 1) for line in head.splitlines())
    return env, tail.split()


@pytest.fixture(scope="module", params=["checkout", "installed"])
def files(request, tmp_path_factory):
    """The closure of this checkout, and of a copy laid out as installed (tracer/bpf/ inside
    the package, no bpf/ beside it: the objects are found through importlib.resources)."""
    where = REPO
    if request.param == "installed":
        from vm.code import code_tree

        where = tmp_path_factory.mktemp("site") / "packages"
        code_tree(where)
        shutil.rmtree(where / "vm")
    return closure(tmp_path_factory.mktemp("cwd"), where) + (where,)


def test_closure_is_the_recorder_and_nothing_heavy(files):
    env, paths, where = files
    names = set(paths)
    assert os.path.realpath(sys.executable) in names and env["FP_PYTHON"] == os.path.realpath(sys.executable)
    for mod in ("boot", "recorder", "sampler", "loader", "libbpf", "bpfmaps", "baseline", "writer", "bootns"):
        assert str(where / "tracer" / f"{mod}.py") in names, mod
    assert any(re.search(r"/libbpf\.so\.1$", p) for p in paths), "libbpf by its soname"
    assert any(p.endswith("/footprint.bpf.o") for p in paths)
    assert any(p.endswith("/baseline.bpf.o") for p in paths)
    heavy = re.compile(r"/(pandas|numpy|matplotlib|plotly|pyarrow|bcc|click|pyroute2)/|libLLVM|libclang|libbcc")
    assert not [p for p in paths if heavy.search(p)]
    assert not [p for p in paths if "/tracer/" in p and re.search(r"/(account|report|render_html|commands|cli)\.py$", p)]
    # every path absolute, existing, no shell surprises (module-setup reads one per line)
    assert all(p.startswith("/") and os.path.lexists(p) for p in paths)
    # the search path holds tracer's parent, never the directory dracut ran in
    assert env["FP_PYTHONPATH"].split(":")[0] == str(where)
    assert "/" not in env["FP_PYTHONPATH"].split(":")


def test_closure_covers_what_a_recording_imports(files, tmp_path):
    """Record for real (attach, baseline, topology, the exec into the sampler, the stop),
    started as footprint-start starts it, with every import logged by python itself."""
    if os.geteuid() != 0:
        pytest.skip("recording needs root")
    env, paths, where = files
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run_env.update(PYTHONHOME=env["FP_PYTHONHOME"].strip("'"), PYTHONPATH=env["FP_PYTHONPATH"].strip("'"),
                   PYTHONPROFILEIMPORTTIME="1", PYTHONDONTWRITEBYTECODE="1")
    rec = tmp_path / "rec.jsonl"
    stop = tmp_path / "stop"
    p = subprocess.Popen([env["FP_PYTHON"], "-S", "-m", "tracer.boot", "record", "-o", str(rec),
                          "--interval", "0.5", "--marks", str(tmp_path / "marks"),
                          "--stop-file", str(stop)], env=run_env, cwd=tmp_path,
                         stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (rec.exists() and b'"sample"' in rec.read_bytes()):
        time.sleep(0.2)
    time.sleep(1.5)
    stop.write_text("test\n")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    imported = set()
    # one block per process image (the recorder, then the sampler it execs into); what
    # `site` imports (this machine's .pth files) has no counterpart in an initramfs
    for block in err.split("import time: self [us] | cumulative | imported package")[1:]:
        names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|( *[\w.]+)$", block, re.M)
        if " site" in names:
            names = names[names.index(" site") + 1:]
        imported |= {n.strip() for n in names}
    assert "tracer.baseline" in imported and "tracer.libbpf" in imported, sorted(imported)[:50]
    # Where each module comes from, asked in the recorder's own environment (a name that
    # does not resolve there was imported by a child process, e.g. a tool in python).
    run_env.pop("PYTHONPROFILEIMPORTTIME")
    where = subprocess.run(
        [env["FP_PYTHON"], "-S", "-c", "import importlib.util, sys\n"
         "for n in sys.argv[1:]:\n"
         "    try: s = importlib.util.find_spec(n)\n"
         "    except Exception: s = None\n"
         "    print(n, getattr(s, 'origin', None) or '-')", *sorted(imported)],
        env=run_env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    have = {os.path.realpath(x) for x in paths}
    missing = [line for line in where.splitlines()
               if line.split()[1].startswith("/") and os.path.realpath(line.split()[1]) not in have]
    assert not missing, missing


def test_boot_entry_usage_is_one_line(tmp_path):
    for args, msg in ((["record"], "required"), (["record", "-o", "x", "--interval", "nan"], "--interval"),
                      (["record", "-o", "x", "--slab", "some"], "--slab"), (["replay"], "invalid choice")):
        p = subprocess.run([sys.executable, "-S", "-m", "tracer.boot", *args], capture_output=True,
                           text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("footprint: "), (args, p.stderr)
        assert msg in lines[0], (args, lines)


def test_boot_entry_bug_is_one_line_exit_70(monkeypatch, capsys):
    """A bug of ours in early boot: one line in the recorder's log, exit 70, no traceback."""
    from tracer import boot, recorder

    def broken(opts):
        raise RuntimeError("a bug\nsecond line")

    monkeypatch.setattr(recorder, "record", broken)
    assert boot.main(["record", "-o", "/nonexistent/x"]) == 70
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("footprint: internal error") and "RuntimeError" in err[0], err


def test_module_setup_takes_the_closure_not_a_distributions_paths():
    text = (REPO / "tracer/dracut_module/module-setup.sh").read_text()
    assert "tracer.closure" in text and "footprint.conf" in text
    for banned in ("dist-packages", "arch/x86", "bpfcc", "/lib/modules/$kernel/build", "/opt/footprint"):
        assert banned not in text, banned
    start = (REPO / "tracer/dracut_module/footprint-start.sh").read_text()
    assert "run.py" not in start and "from tracer.boot import main" in start
    assert shutil.which("bash")
    assert subprocess.run(["bash", "-n", str(REPO / "tracer/dracut_module/module-setup.sh")]).returncode == 0
