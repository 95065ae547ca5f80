"""The files the early-boot recorder needs, asked of the interpreter that will run it.

The dracut module's module-setup.sh runs `PYTHON -m tracer.closure` with the interpreter
`footprint dracut install` recorded. This process starts a probe: the same interpreter,
started the way the initramfs starts it (`-S`, PYTHONHOME, PYTHONPATH; see
footprint-start.sh), imports the recorder's entries (tracer.boot, tracer.sampler), then every module that a
loaded `tracer` module imports anywhere, even inside a function (read from its source with
ast), and loads libbpf.so.1 through tracer.libbpf's own lookup. Its answer is what it
actually loaded: every module's file and cached bytecode, the BPF objects, and the ELF
files mapped into it (/proc/self/maps: the interpreter, libc, libffi, libbpf, libelf, ...;
their dependencies are mapped too, so no ldd), plus the symlinks by which they are found
(libbpf.so.1 -> libbpf.so.1.1.2). No hand-kept list, no distribution's paths, no arch.

Modules only the analysis commands use (pandas, numpy, matplotlib, plotly, pyarrow), bcc
(the recorder needs no compiler on a kernel with BTF) and pyroute2 (optional, see REFUSED)
are refused to the probe: a `tracer` module that imports one of them is not part of the
recorder, an optional import of one takes its fallback.

Output (stdout): `KEY=value` lines (shell-quoted) for the start script, then `--`, then one
absolute path per line. Exit 2 with one line on stderr if the probe fails.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

# What the initramfs runs: the recorder's entry, and the sampler it execs into (named in a
# `python -c` string, not an import statement: see attacher.sampler_argv).
ENTRIES = ("tracer.boot", "tracer.sampler")
REFUSED = ("pandas", "numpy", "matplotlib", "plotly", "pyarrow", "bcc", "click", "PIL",
           # optional in the recorder (topology.uevents parses uevents itself without it);
           # importing the package loads asyncio, ssl and sqlite3 (~8 MiB with libcrypto)
           "pyroute2")
# Codecs python may pick at start-up in the initramfs's C/POSIX locale.
CODECS = ("encodings.utf_8", "encodings.ascii", "encodings.latin_1", "encodings.aliases")


def _package_parent() -> str:
    import tracer

    return os.path.dirname(os.path.dirname(os.path.abspath(tracer.__file__)))


def search_path() -> list[str]:
    """The sys.path entries outside the standard library, tracer's parent first: with -S
    (no site) the probe and the initramfs see exactly these, in this order."""
    std = {os.path.realpath(p) for p in sys.path
           if p.startswith(os.path.join(sys.base_prefix, "lib")) and "-packages" not in p}
    out = [_package_parent()]
    cwd = os.getcwd()  # sys.path[0] under `python -m`: where dracut happened to run
    for p in sys.path:
        if p and p != cwd and os.path.isdir(p) and os.path.realpath(p) not in std and p not in out:
            out.append(p)
    return out


def python_home() -> str:
    """PYTHONHOME for the standard library of this interpreter (prefix[:exec_prefix])."""
    if sys.base_exec_prefix != sys.base_prefix:
        return f"{sys.base_prefix}:{sys.base_exec_prefix}"
    return sys.base_prefix


def boot_env() -> dict:
    """The environment footprint-start gives the recorder (and this probe)."""
    return {"PYTHONHOME": python_home(), "PYTHONPATH": os.pathsep.join(search_path()),
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


def compute() -> dict:
    """Run the probe; {"env": {...}, "files": [...]}. FootprintError if it fails."""
    from .errors import FootprintError

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(boot_env(), LC_ALL="C")
    exe = os.path.realpath(sys.executable)
    p = subprocess.run([exe, "-S", "-c", _PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise FootprintError(f"{exe} cannot load footprint's recorder ({last}): reinstall "
                             "footprint for this interpreter, then footprint dracut install")
    got = json.loads(p.stdout)
    files = set(got["files"]) | {exe, sys.executable}
    for f in list(files):
        files |= _links_to(f)
    pythonpath = [d for d in search_path() if d in got["used_path"]]
    libdirs = sorted({os.path.dirname(f) for f in got["libs"]})
    return {"env": {"FP_PYTHON": exe, "FP_PYTHONHOME": python_home(),
                    "FP_PYTHONPATH": os.pathsep.join(pythonpath),
                    "FP_LIBPATH": os.pathsep.join(libdirs)},
            "files": sorted(f for f in files if "\n" not in f)}


def _links_to(path: str) -> set:
    """Symlinks in path's directory naming it by a shorter name (a library's soname:
    libbpf.so.1 -> libbpf.so.1.1.2), which the dynamic loader opens it by."""
    d, name = os.path.split(path)
    stem = name.split(".so", 1)[0] + ".so" if ".so" in name else None
    out = set()
    if stem is None:
        return out
    try:
        names = os.listdir(d)
    except OSError:
        return out
    real = os.path.realpath(path)
    for n in names:
        p = os.path.join(d, n)
        if n.startswith(stem) and n != name and os.path.islink(p) and os.path.realpath(p) == real:
            out.add(p)
    return out


# The probe: runs under `-S` with the boot environment; prints JSON.
_PROBE = r'''
import ast, importlib, importlib.util, json, os, sys

REFUSED = %(refused)r

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError("refused: " + name)
        return None

sys.meta_path.insert(0, Refuse())
for m in %(codecs)r + %(entries)r:
    importlib.import_module(m)

def imports_of(mod):
    try:
        tree = ast.parse(open(mod.__file__, "rb").read())
    except (OSError, SyntaxError, TypeError, ValueError):
        return
    pkg = mod.__name__ if hasattr(mod, "__path__") else mod.__name__.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            for a in node.names:
                yield base + "." + a.name

done = set()
while True:
    todo = [m for n, m in list(sys.modules.items())
            if n.split(".")[0] == "tracer" and n not in done and getattr(m, "__file__", None)]
    if not todo:
        break
    for mod in todo:
        done.add(mod.__name__)
        for name in imports_of(mod):
            if name and name not in sys.modules:
                try:
                    importlib.import_module(name)
                except BaseException:
                    pass

from tracer import bpffiles, libbpf, loader  # noqa: F401  (loader: the attach side)
libbpf.lib()
objects = [os.path.abspath(str(bpffiles.bpf_file(n))) for n in ("footprint.bpf.o", "baseline.bpf.o")]
files, used, modfiles = set(), set(), set()
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None)
    if not f or not os.path.isabs(f):
        continue
    files.add(f)
    modfiles.add(f)
    if f.endswith(".py"):
        try:
            c = importlib.util.cache_from_source(f)
            if os.path.exists(c):
                files.add(c)
        except ValueError:
            pass
    best = max((p for p in sys.path if p and f.startswith(p.rstrip("/") + "/")), key=len, default=None)
    if best:
        used.add(best)
files.update(p for p in objects if os.path.isfile(p))
libs = set()
with open("/proc/self/maps") as f:
    for line in f:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[4] != "0":
            path = parts[5].strip()
            if path.endswith(" (deleted)") or path.startswith(("/dev/", "/memfd:")):
                continue
            files.add(path)
            if ".so" in os.path.basename(path) and path not in modfiles:
                libs.add(path)
print(json.dumps({"files": sorted(files), "used_path": sorted(used), "libs": sorted(libs)}))
''' % {"refused": REFUSED, "codecs": CODECS, "entries": ENTRIES}


def main() -> int:
    """`python -m tracer.closure`, run by module-setup.sh at initramfs build time: the
    environment lines (KEY=value), "--", then one file per line the recorder needs."""
    from .errors import FootprintError

    try:
        got = compute()
    except (FootprintError, OSError, subprocess.SubprocessError, ValueError) as err:
        sys.stderr.write(f"footprint: {err}\n")
        return 2
    for k, v in got["env"].items():
        print(f"{k}={shlex.quote(v)}")
    print("--")
    print("\n".join(got["files"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
