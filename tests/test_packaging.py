"""The package as a user installs it: a wheel (python -m build) carrying the BPF source,
the CO-RE object built at wheel build time and the dracut module, pip-installed into a
fresh venv that sees Debian's bcc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent


def test_wheel_carries_bpf_source_and_dracut_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "tracer/bpf/footprint.c" in names
    for f in ("footprint.bpf.o", "footprint.bpf.c", "footprint_types.h", "footprint_logic.h",
              "baseline.bpf.o", "baseline.bpf.c", "baseline.h"):
        assert f"tracer/bpf/{f}" in names, f
    assert not any(n.endswith(("vmlinux.h", ".key")) or ".build" in n for n in names), names
    assert "tracer/dracut_module/module-setup.sh" in names
    assert "tracer/closure.py" in names and "tracer/boot.py" in names
    assert not any(n.startswith("vm/dracut/") for n in names), names
    assert "tracer/sampler.py" in names


def test_wheel_installs_into_a_venv_that_sees_debians_bcc(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, timeout=900)
    have_bcc = Path("/usr/lib/python3/dist-packages/bcc").is_dir()
    if have_bcc:
        subprocess.run(["bash", str(REPO / "scripts" / "link-bcc"), str(venv)], check=True)
        subprocess.run([str(py), "-c", "import bcc"], check=True, cwd=tmp_path)
    # Run from elsewhere: the installed copy, not the repo, must serve.
    out = subprocess.run([str(venv / "bin" / "footprint"), "--version"], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert "footprint" in out
    src = subprocess.run([str(py), "-c", "from tracer import loader, dracut; "
                          "s = loader.bpf_source(); print(len(s), '#include \"footprint_' in s); "
                          "print(dracut.module_source()); print(loader.bpf_object())"],
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert int(src[0]) > 1000 and src[1] == "False" and str(venv) in src[2]
    assert src[3].startswith(str(venv)) and src[3].endswith("tracer/bpf/footprint.bpf.o"), src
    if have_bcc and os.geteuid() == 0:
        # Record with the installed copy: the recorder execs into its sampler as
        # "@footprint", which must find the package inside the venv.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        rec = subprocess.run([str(venv / "bin" / "footprint"), "record", "-o", "rec.jsonl", "-d", "2",
                              "--interval", "0.5", "--no-inventory"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        assert rec.returncode == 0 and "Traceback" not in rec.stderr, rec.stderr
        rep = subprocess.run([str(venv / "bin" / "footprint"), "report", "--json", "rec.jsonl"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert rep.returncode == 0, rep.stderr
        summary = json.loads(rep.stdout)["recording"]
        assert summary["samples"] >= 1 and summary["partial"] is False, summary


def test_wheel_build_without_clang_says_so_in_one_line(tmp_path):
    """The object's build script, as the wheel build runs it, on a machine without clang."""
    p = subprocess.run(["bash", str(REPO / "scripts" / "build-bpf"), str(tmp_path)],
                       capture_output=True, text=True, env=dict(os.environ, CLANG="no-such-clang"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "clang is missing" in p.stderr, p.stderr
