"""`footprint record` from any directory: after attaching, the recorder execs into the
lean sampler as argv[0] "@footprint", under which python cannot find its venv; the
sampler must still import this package (and nothing but the standard library)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tracer import recording

REPO = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to load BPF")


def _serves_this_checkout(cwd: Path) -> bool:
    """Whether a plain `import tracer` in `cwd` gets this checkout (not another one the
    editable install points at, as in a second git worktree)."""
    out = subprocess.run([sys.executable, "-c", "import tracer; print(tracer.__file__)"],
                         cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    return Path(out).resolve() == (REPO / "tracer" / "__init__.py").resolve()


def _commands(cwd: Path) -> dict[str, tuple[list[str], dict]]:
    """The ways a user starts footprint, each run from `cwd` on this checkout's code."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    installed_env = dict(env)
    if not _serves_this_checkout(cwd):
        # The installed `tracer` is another checkout's: point at ours. (This hides the
        # sampler's own search, which the "checkout" way below still exercises.)
        installed_env["PYTHONPATH"] = str(REPO)
    script = Path(sys.executable).parent / "footprint"
    ways = {
        "python -m tracer": ([sys.executable, "-m", "tracer"], installed_env),
        # A checkout found only through the caller's sys.path: nothing the sampler
        # inherits (cwd, PYTHONPATH, the venv) leads to it.
        "checkout": ([sys.executable, "-c",
                      f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                      "from tracer.cli import main; main()"], env),
    }
    if script.exists():
        ways["console script"] = ([str(script)], installed_env)
    return ways


def test_sampler_needs_only_the_standard_library_and_its_package(tmp_path):
    """Its imports work with no site-packages at all (python -S), from elsewhere, through
    the argv the recorder execs, and pull in neither bcc nor click."""
    from tracer.attacher import sampler_argv

    argv = sampler_argv()
    assert argv[0] == "@footprint" and "-S" in argv[:argv.index("-c")]
    at = argv.index("-c") + 1
    code = argv[at].replace("sys.exit(main())",
                           "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                           "('bcc', 'click', 'pandas', 'pyroute2')))")
    out = subprocess.run([sys.executable, "-S", "-c", code, *argv[at + 1:]], cwd=tmp_path,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@needs_root
@pytest.mark.bpf
@pytest.mark.parametrize("way", ["python -m tracer", "checkout", "console script"])
def test_record_from_another_directory(way, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    ways = _commands(cwd)
    if way not in ways:
        pytest.skip(f"no {way} next to {sys.executable}")
    cmd, env = ways[way]
    out = cwd / "rec.jsonl"
    p = subprocess.run(cmd + ["record", "-o", "rec.jsonl", "-d", "3", "--interval", "0.5",
                              "--no-inventory"],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "Error while finding" not in p.stderr, p.stderr
    rec = recording.read(str(out))
    assert len(rec.samples) >= 1 and rec.end is not None and rec.end["reason"] == "duration"
    assert any(t.get("stage") == "sampler" for t in rec.tracer), rec.tracer  # it did exec
    rep = subprocess.run(cmd + ["report", str(out)], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
