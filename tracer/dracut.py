"""`footprint dracut install|uninstall`: put footprint's dracut module where dracut looks.

The module directory is the one dracut itself declares in its pkg-config file
(`dracutmodulesdir` in dracut.pc, shipped by every dracut since 2013); the version comes
from dracut-version.sh. Installing copies the module (package data: tracer/dracut_module)
and writes footprint.conf beside it: the interpreter this command runs under and the
directory `tracer` was imported from, which module-setup.sh asks for the recorder's files
(tracer.closure). It never touches an existing initramfs: the user rebuilds it when they
choose, with `dracut --force --add footprint` and boots with `rd.footprint=1`.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from .errors import FootprintError

MODULE = "95footprint"
MIN_VERSION = 55  # systemd-in-initramfs units and hook layout as footprint uses them
PC_CANDIDATES = ("usr/share/pkgconfig/dracut.pc", "usr/lib/pkgconfig/dracut.pc",
                 "usr/lib64/pkgconfig/dracut.pc", "usr/lib/x86_64-linux-gnu/pkgconfig/dracut.pc")
VERSION_FILES = ("usr/lib/dracut/dracut-version.sh", "usr/lib64/dracut/dracut-version.sh")


CONF = "footprint.conf"


def module_source() -> Path:
    """The module shipped with footprint: package data beside this file (the checkout's
    tracer/dracut_module, or the installed wheel's)."""
    here = Path(__file__).resolve().parent / "dracut_module"
    try:
        if (here / "module-setup.sh").is_file():
            return here
    except OSError as err:
        raise FootprintError(f"cannot read footprint's dracut module in {here}: {err.strerror}: "
                             "install footprint where this user can read it") from None
    raise FootprintError("footprint's dracut module is missing from this installation: "
                         "reinstall footprint")


def conf_text(python: str | None = None, pythonpath: str | None = None) -> str:
    """footprint.conf: which python module-setup.sh asks for the recorder's files, and
    where it finds `tracer` (default: this interpreter and this package's parent)."""
    python = python or sys.executable
    if pythonpath is None:
        pythonpath = str(Path(__file__).resolve().parent.parent)
    if not python or not os.path.isabs(python):
        raise FootprintError("cannot tell which python runs footprint (sys.executable is "
                             f"{python!r}): run `footprint dracut install` with a python by its path")
    return ("# written by `footprint dracut install`: the python that imports footprint\n"
            f"FP_INSTALL_PYTHON={shlex.quote(python)}\n"
            f"FP_INSTALL_PYTHONPATH={shlex.quote(pythonpath)}\n")


def _module_files(conf: str) -> dict:
    """name -> bytes of the module as installed (its README stays in the package)."""
    src = module_source()
    try:
        files = {f.name: f.read_bytes() for f in src.iterdir() if f.is_file() and f.suffix != ".md"}
    except OSError as err:
        raise FootprintError(f"cannot read footprint's dracut module in {src}: {err.strerror}: "
                             "install footprint where this user can read it") from None
    files[CONF] = conf.encode()
    return files


def _pc_variables(text: str) -> dict:
    """name=value lines of a pkg-config file, ${var} expanded."""
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = re.sub(r"\$\{(\w+)\}", lambda v: out.get(v.group(1), ""), m.group(2))
    return out


def dracut_version(root: Path) -> str | None:
    """The dracut version installed under `root` (DRACUT_VERSION in its
    dracut-version.sh), or None."""
    for rel in VERSION_FILES:
        try:
            m = re.search(r"DRACUT_VERSION=['\"]?([\w.+-]+)", (root / rel).read_text())
        except OSError:
            continue
        if m:
            return m.group(1)
    return None


def modules_dir(root: Path = Path("/")) -> Path:
    """Where dracut under `root` takes its modules from; FootprintError if no usable dracut."""
    version = dracut_version(root)
    if version is None:
        raise FootprintError(f"dracut is not installed under {root}: install dracut (and "
                             "dracut-live for live media) first")
    major = int(re.match(r"\d+", version).group(0)) if re.match(r"\d+", version) else 0
    if major < MIN_VERSION:
        raise FootprintError(f"dracut {version} under {root} is too old: footprint's module "
                             f"needs dracut {MIN_VERSION} or newer")
    for rel in PC_CANDIDATES:
        try:
            variables = _pc_variables((root / rel).read_text())
        except OSError:
            continue
        if variables.get("dracutmodulesdir"):
            return _inside(root, variables["dracutmodulesdir"], root / rel)
    fallback = _inside(root, "usr/lib/dracut/modules.d", root / "usr/lib/dracut")
    if fallback.is_dir():
        return fallback
    raise FootprintError(f"cannot tell where dracut {version} keeps its modules under {root} "
                         "(no dracut.pc): pass --root to a complete system tree")


def _inside(root: Path, value: str, source: Path) -> Path:
    """root/value, refused unless it stays inside root: lexically ("/../.." escapes) and
    through the symlinks that exist in the tree (an image's absolute link points at the
    host). dracut.pc of an image is the image's data, not ours to trust."""
    top = os.path.abspath(root)
    path = Path(os.path.normpath(os.path.join(top, value.lstrip("/"))))
    for p, t in ((path, top), (os.path.realpath(path), os.path.realpath(top))):
        if os.path.commonpath([p, t]) != t:
            raise FootprintError(f"dracutmodulesdir={value!r} in {source} leads outside "
                                 f"{root}: fix that dracut.pc or pass another --root")
    return path


def install(root: Path = Path("/"), force: bool = False) -> Path:
    """Into the modules dir of the dracut under `root` (refusing without a usable one)."""
    return install_into(modules_dir(root), force=force)


def install_into(mods: Path, force: bool = False, python: str | None = None,
                 pythonpath: str | None = None) -> Path:
    """Into a given modules dir (e.g. a writable copy of an image's, as the lab does);
    `python`/`pythonpath`: the interpreter of the system the initramfs is built in, when
    that is not this one. Never follows a symlink at the destination: a symlink or a file
    there is refused, or with force removed (the link itself, not what it points to)."""
    dest = mods / MODULE
    # The destination first: who may not change it learns that before anything is read.
    if mods.is_dir() and not os.access(mods, os.W_OK | os.X_OK):
        raise _error(mods, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))
    files = _module_files(conf_text(python, pythonpath))
    kind = _kind(dest)
    if kind == "directory" and not force:
        if _same_tree(files, dest):
            return dest
        raise FootprintError(f"{dest} exists and differs: pass --force to replace it")
    if kind not in (None, "directory") and not force:
        raise FootprintError(f"{dest} is a {kind}, not footprint's module: remove it or pass "
                             "--force to replace it")
    try:
        _remove_stale_temps(mods)
        tmp = Path(tempfile.mkdtemp(prefix=f".{MODULE}.", suffix=".tmp", dir=mods))
        try:
            tmp.chmod(0o755)
            # the module is flat; scripts executable whatever the wheel kept of modes
            for name, data in files.items():
                (tmp / name).write_bytes(data)
                (tmp / name).chmod(0o755 if data.startswith(b"#!") else 0o644)
            _remove(dest)
            tmp.rename(dest)
        except BaseException:
            _remove(tmp)
            raise
    except OSError as err:
        raise _error(mods, err) from None
    return dest


def uninstall(root: Path = Path("/")) -> Path | None:
    """Removes footprint's module from dracut's modules dir under `root`; returns the
    path removed, or None when it was not installed. Only a directory is removed."""
    dest = modules_dir(root) / MODULE
    kind = _kind(dest)
    if kind is None:
        return None
    if kind != "directory":
        raise FootprintError(f"{dest} is a {kind}, not footprint's module: remove it yourself "
                             "if it is not needed")
    try:
        _remove(dest)
    except OSError as err:
        raise _error(dest.parent, err) from None
    return dest


def _kind(path: Path) -> str | None:
    """What is at `path` itself (a symlink is not followed), None if nothing."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        raise _error(path.parent, err) from None
    if stat.S_ISLNK(mode):
        return "symlink"
    return "directory" if stat.S_ISDIR(mode) else "file"


def _remove(path: Path) -> None:
    """Remove a directory tree, a file or a symlink at `path`, following no symlink."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)  # does not follow symlinks inside the tree


def _remove_stale_temps(mods: Path) -> None:
    """Temporary copies left by an interrupted install (and the fixed name older versions
    used, which made the next install fail)."""
    for stale in mods.glob(f".{MODULE}.*tmp"):
        _remove(stale)


def _error(where: Path, err: OSError) -> FootprintError:
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return FootprintError(f"cannot change {where}: {err.strerror}: run as root "
                              "(sudo footprint dracut ...) or pass a writable --root")
    return FootprintError(f"cannot change {where}: {err.strerror}: check that dracut is "
                          "complete under --root")


def _same_tree(files: dict, b: Path) -> bool:
    """Same names and contents; a symlink or directory inside `b` makes it different."""
    try:
        if sorted(files) != sorted(p.name for p in b.iterdir()):
            return False
        return all(_kind(b / n) == "file" and (b / n).read_bytes() == data
                   for n, data in files.items())
    except OSError as err:
        raise _error(b, err) from None
