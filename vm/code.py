"""footprint's own code for the guest, built per change in well under a second.

The tree put at /opt/footprint in the guest:

    /opt/footprint/run.py            python3 /opt/footprint/run.py ... == footprint ...
    /opt/footprint/tracer/...        the repo's tracer/
    /opt/footprint/tracer/bpf/...    the repo's bpf/ (installed as package tracer.bpf)
    /opt/footprint/vm/...            the repo's vm/ (the guest agent is vm/guest/fp_agent.py)

Carriers, each cached by a hash of the files' names and contents:
  code_disk()      ext4 image, label FPCODE, attached as a virtio disk with serial "fpcode";
                   the guest's footprint-agent.service mounts it read-only at /opt/footprint.
  code_cpio()      newc cpio with the same tree under opt/footprint, to append to an
                   initramfs (concatenated cpio archives are a valid initramfs).
  recorder_cpio()  only tracer/ (what the initramfs's recorder imports from
                   /opt/footprint) with its bytecode: appended at boot to the traced
                   initramfs, it overlays the copy the dracut module installed there (a
                   later archive's file replaces an earlier one of the same path), so a code
                   change costs a second, not a 1-2 min initramfs rebuild.

The traced initramfs itself is rebuilt only when what the recorder needs from outside
tracer/ may have changed: its key holds `import_signature()`, the modules tracer/ imports.
"""

from __future__ import annotations

import ast
import hashlib
import os
import py_compile
import shutil
import subprocess
from pathlib import Path
from typing import Optional

from . import cache as C
from . import cpio

REPO = Path(__file__).resolve().parent.parent
RUN_PY = '''#!/usr/bin/python3
"""footprint in the guest: python3 /opt/footprint/run.py ARGS (or /usr/local/bin/footprint)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tracer.cli import main  # noqa: E402

main()
'''
_SKIP_DIRS = {"__pycache__", ".pytest_cache"}
_SKIP_SUFFIX = (".pyc", ".pyo", ".swp", "~")


def _files(repo: Path) -> list[tuple[str, Path]]:
    """(path under /opt/footprint, source) for every file, sorted."""
    out = []
    for src_dir, dst_dir in (("tracer", "tracer"), ("bpf", "tracer/bpf"), ("vm", "vm")):
        base = repo / src_dir
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
            for fn in sorted(filenames):
                if fn.endswith(_SKIP_SUFFIX) or fn.startswith("."):
                    continue
                src = Path(dirpath) / fn
                rel = src.relative_to(base)
                out.append((f"{dst_dir}/{rel}", src))
    return sorted(out)


def _key(files: list[tuple[str, Path]]) -> str:
    h = hashlib.sha256(RUN_PY.encode())
    for rel, src in files:
        h.update(rel.encode() + b"\0")
        h.update(str(os.access(src, os.X_OK)).encode())
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def code_tree(dest: Path, repo: Path = REPO) -> None:
    """Writes the /opt/footprint tree into `dest` (which must not exist)."""
    dest.mkdir(parents=True)
    for rel, src in _files(repo):
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)
    (dest / "run.py").write_text(RUN_PY)
    os.chmod(dest / "run.py", 0o755)


def _code_dir(cache_dir: Optional[os.PathLike], repo: Path) -> tuple[Path, str]:
    root = C.cache_root(cache_dir)
    files = _files(repo)
    return root, _key(files)


def _prune(root: Path, keep: int = 6) -> None:
    dirs = sorted(root.glob("code-*"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in dirs[keep:]:
        C.remove_tree(old)


def code_disk(cache_dir: Optional[os.PathLike] = None, repo: Path = REPO) -> Path:
    """ext4 image (label FPCODE) of the code tree; cached per content hash."""
    root, key = _code_dir(cache_dir, repo)
    final = root / f"code-{key}"
    img = final / "code.img"
    if img.exists():
        os.utime(final)
        return img
    C.require_tools("mkfs.ext4")
    with C.building(final) as tmp:
        code_tree(tmp / "tree", repo)
        used = sum(p.stat().st_size for p in (tmp / "tree").rglob("*") if p.is_file())
        size_mib = max(16, (used * 2 >> 20) + 8)
        with open(tmp / "code.img", "wb") as f:
            f.truncate(size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "FPCODE", "-d", str(tmp / "tree"),
                        str(tmp / "code.img")], check=True, capture_output=True)
        cpio.write(tmp / "tree", tmp / "code.cpio")
        shutil.rmtree(tmp / "tree")
    _prune(root)
    return img


def code_cpio(cache_dir: Optional[os.PathLike] = None, repo: Path = REPO) -> Path:
    """newc cpio (uncompressed) placing the code tree at /opt/footprint; append it to an
    initramfs (the kernel unpacks concatenated archives, see Guest(initrd_append=...))."""
    return code_disk(cache_dir, repo).parent / "code.cpio"


def import_signature(repo: Path = REPO) -> list[str]:
    """Every module name tracer/ imports from outside itself, anywhere in a file (sorted):
    the part of the code that decides which files of python the initramfs needs."""
    names = set()
    for rel, src in _files(repo):
        if not (rel.startswith("tracer/") and rel.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(src.read_bytes())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return sorted(n for n in names if n.split(".")[0] != "tracer")


def recorder_cpio(cache_dir: Optional[os.PathLike] = None, repo: Path = REPO) -> Path:
    """newc cpio of tracer/ (and its BPF objects) at /opt/footprint, each module with
    bytecode compiled by this python as unchecked-hash .pyc (valid whatever the archive's
    mtimes; ignored, and compiled at import, by a guest python of another version)."""
    files = [(rel, src) for rel, src in _files(repo)
             if rel.startswith("tracer/") and not rel.startswith("tracer/dracut_module/")]
    key = _key(files)
    root = C.cache_root(cache_dir)
    final = root / f"recorder-{key}"
    out = final / "recorder.cpio"
    if out.exists():
        os.utime(final)
        return out
    with C.building(final) as tmp:
        tree = tmp / "tree"
        for rel, src in files:
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644)
            if rel.endswith(".py"):
                py_compile.compile(str(dst), cfile=_cache_from_source(dst), dfile=f"/opt/footprint/{rel}",
                                   doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        cpio.write(tree, tmp / "recorder.cpio")
        shutil.rmtree(tree)
    for old in sorted(root.glob("recorder-*"), key=lambda p: p.stat().st_mtime, reverse=True)[6:]:
        C.remove_tree(old)
    return out


def _cache_from_source(path: Path) -> str:
    import importlib.util

    return importlib.util.cache_from_source(str(path))
