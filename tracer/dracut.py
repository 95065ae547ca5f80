"""`footprint dracut install|uninstall`: put footprint's dracut module where dracut looks.

The module directory is the one dracut itself declares in its pkg-config file
(`dracutmodulesdir` in dracut.pc, shipped by every dracut since 2013); the version comes
from dracut-version.sh. Installing copies the module (vm/dracut/95footprint) and never
touches an existing initramfs: the user rebuilds it when they choose, with
`dracut --force --add footprint` and boots with `rd.footprint=1`.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources
from pathlib import Path

from .errors import FootprintError

MODULE = "95footprint"
MIN_VERSION = 55  # systemd-in-initramfs units and hook layout as footprint uses them
PC_CANDIDATES = ("usr/share/pkgconfig/dracut.pc", "usr/lib/pkgconfig/dracut.pc",
                 "usr/lib64/pkgconfig/dracut.pc", "usr/lib/x86_64-linux-gnu/pkgconfig/dracut.pc")
VERSION_FILES = ("usr/lib/dracut/dracut-version.sh", "usr/lib64/dracut/dracut-version.sh")


def module_source() -> Path:
    """The module shipped with footprint (in the repo or inside the installed wheel)."""
    here = Path(__file__).resolve().parent.parent / "vm" / "dracut" / MODULE
    if (here / "module-setup.sh").is_file():
        return here
    packaged = Path(str(resources.files("vm").joinpath("dracut", MODULE)))
    if (packaged / "module-setup.sh").is_file():
        return packaged
    raise FootprintError("footprint's dracut module is missing from this installation: "
                         "reinstall footprint")


def _pc_variables(text: str) -> dict:
    """name=value lines of a pkg-config file, ${var} expanded."""
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = re.sub(r"\$\{(\w+)\}", lambda v: out.get(v.group(1), ""), m.group(2))
    return out


def dracut_version(root: Path) -> str | None:
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
            return root / variables["dracutmodulesdir"].lstrip("/")
    fallback = root / "usr/lib/dracut/modules.d"
    if fallback.is_dir():
        return fallback
    raise FootprintError(f"cannot tell where dracut {version} keeps its modules under {root} "
                         "(no dracut.pc): pass --root to a complete system tree")


def install(root: Path = Path("/"), force: bool = False) -> Path:
    """Into the modules dir of the dracut under `root` (refusing without a usable one)."""
    return install_into(modules_dir(root), force=force)


def install_into(mods: Path, force: bool = False) -> Path:
    """Into a given modules dir (e.g. a writable copy of an image's, as the lab does)."""
    dest = mods / MODULE
    if dest.exists() and not force:
        if _same_tree(module_source(), dest):
            return dest
        raise FootprintError(f"{dest} exists and differs: pass --force to replace it")
    tmp = dest.with_name(f".{MODULE}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(module_source(), tmp)
    for f in tmp.iterdir():  # scripts executable whatever the wheel kept of modes
        f.chmod(0o755 if f.read_bytes().startswith(b"#!") else 0o644)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def uninstall(root: Path = Path("/")) -> Path | None:
    dest = modules_dir(root) / MODULE
    if not dest.exists():
        return None
    shutil.rmtree(dest)
    return dest


def _same_tree(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)
