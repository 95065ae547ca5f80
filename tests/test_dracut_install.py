"""`footprint dracut install|uninstall` against system trees: a scratch tree laid out like
dracut 059's, an old dracut, none at all. (Booting an initramfs built from the installed
module is tests/test_early_boot.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tracer import dracut
from tracer.errors import FootprintError


def fake_dracut(root, version="059-4", pc=True):
    (root / "usr/lib/dracut/modules.d").mkdir(parents=True)
    (root / "usr/lib/dracut/dracut-version.sh").write_text(f"#!/bin/sh\nDRACUT_VERSION={version}\n")
    if pc:
        (root / "usr/share/pkgconfig").mkdir(parents=True)
        (root / "usr/share/pkgconfig/dracut.pc").write_text(
            "dracutdir=/usr/lib/dracut\ndracutmodulesdir=${dracutdir}/modules.d\n")
    return root


def footprint(*args):
    return subprocess.run([sys.executable, "-m", "tracer", *args], capture_output=True, text=True)


def test_install_uses_dracuts_own_module_dir_and_uninstall_removes_it(tmp_path):
    root = fake_dracut(tmp_path)
    p = footprint("dracut", "install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    dest = root / "usr/lib/dracut/modules.d/95footprint"
    assert (dest / "module-setup.sh").is_file()
    shipped = {f.name for f in dracut.module_source().iterdir() if f.suffix != ".md"}
    assert sorted(f.name for f in dest.iterdir()) == sorted(shipped | {"footprint.conf"})
    # the python that runs footprint, and where it imports tracer from: module-setup.sh
    # asks exactly that interpreter for the recorder's files
    conf = (dest / "footprint.conf").read_text()
    assert f"FP_INSTALL_PYTHON={sys.executable}\n" in conf, conf
    assert f"FP_INSTALL_PYTHONPATH={Path(dracut.__file__).resolve().parent.parent}\n" in conf
    assert "dracut --force --add footprint" in p.stdout
    assert footprint("dracut", "install", "--root", str(root)).returncode == 0  # idempotent
    (dest / "module-setup.sh").write_text("# changed\n")
    p = footprint("dracut", "install", "--root", str(root))
    assert p.returncode == 2 and "--force" in p.stderr
    assert footprint("dracut", "install", "--root", str(root), "--force").returncode == 0
    assert footprint("dracut", "uninstall", "--root", str(root)).returncode == 0
    assert not dest.exists()


def test_modules_dir_follows_dracut_pc(tmp_path):
    root = fake_dracut(tmp_path)
    (root / "usr/share/pkgconfig/dracut.pc").write_text("dracutmodulesdir=/opt/dracut/mods\n")
    assert dracut.modules_dir(root) == root / "opt/dracut/mods"


@pytest.mark.parametrize("version, message", [(None, "not installed"), ("044", "too old")])
def test_refuses_without_a_usable_dracut(tmp_path, version, message):
    root = tmp_path if version is None else fake_dracut(tmp_path, version=version)
    with pytest.raises(FootprintError, match=message):
        dracut.install(root)
    p = footprint("dracut", "install", "--root", str(root))
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1


# --- hostile destinations and trees (footprint runs as root)

MODS = "usr/lib/dracut/modules.d"


def one_line_error(p) -> bool:
    lines = p.stderr.strip().splitlines()
    return p.returncode == 2 and len(lines) == 1 and lines[0].startswith("footprint: ")


def test_symlink_at_destination_is_refused_then_replaced_not_followed(tmp_path):
    root = fake_dracut(tmp_path / "root")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("precious\n")
    dest = root / MODS / "95footprint"
    dest.symlink_to(victim)
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and "symlink" in p.stderr and "--force" in p.stderr, p.stderr
    p = footprint("dracut", "install", "--root", str(root), "--force")
    assert p.returncode == 0, p.stderr
    assert not dest.is_symlink() and (dest / "module-setup.sh").is_file()
    assert sorted(f.name for f in victim.iterdir()) == ["keep"]


def test_uninstall_never_follows_a_symlink(tmp_path):
    root = fake_dracut(tmp_path / "root")
    victim = tmp_path / "victim"
    victim.mkdir()
    (root / MODS / "95footprint").symlink_to(victim)
    p = footprint("dracut", "uninstall", "--root", str(root))
    assert one_line_error(p) and "symlink" in p.stderr, p.stderr
    assert victim.is_dir()


def test_file_at_destination_is_refused_then_replaced(tmp_path):
    root = fake_dracut(tmp_path)
    dest = root / MODS / "95footprint"
    dest.write_text("not a module\n")
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and str(dest) in p.stderr and "--force" in p.stderr, p.stderr
    assert footprint("dracut", "install", "--root", str(root), "--force").returncode == 0
    assert (dest / "module-setup.sh").is_file()


@pytest.mark.parametrize("leftover", ["dir", "file", "symlink"])
def test_stale_temporary_does_not_break_install(tmp_path, leftover):
    root = fake_dracut(tmp_path / "root")
    stale = root / MODS / ".95footprint.tmp"  # what an interrupted older install left
    victim = tmp_path / "victim"
    victim.mkdir()
    if leftover == "dir":
        stale.mkdir()
        (stale / "module-setup.sh").write_text("# half copied\n")
    elif leftover == "file":
        stale.write_text("junk\n")
    else:
        stale.symlink_to(victim)
    p = footprint("dracut", "install", "--root", str(root))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in (root / MODS).iterdir()) == ["95footprint"]
    assert victim.is_dir()


@pytest.mark.parametrize("value", ["/../../..", "/usr/../../etc", "${dracutdir}/../../../../x"])
def test_modules_dir_outside_root_is_refused(tmp_path, value):
    root = fake_dracut(tmp_path / "root")
    (root / "usr/share/pkgconfig/dracut.pc").write_text(f"dracutdir=/usr/lib/dracut\ndracutmodulesdir={value}\n")
    with pytest.raises(FootprintError, match="outside"):
        dracut.modules_dir(root)
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and "dracutmodulesdir=" in p.stderr, p.stderr
    assert not (tmp_path / "95footprint").exists() and not list(tmp_path.glob("**/95footprint"))


def test_modules_dir_through_a_symlink_out_of_root_is_refused(tmp_path):
    root = fake_dracut(tmp_path / "root")
    (tmp_path / "host-mods").mkdir()
    (root / "opt").mkdir()
    (root / "opt/mods").symlink_to(tmp_path / "host-mods")  # absolute: the host's, not the image's
    (root / "usr/share/pkgconfig/dracut.pc").write_text("dracutmodulesdir=/opt/mods\n")
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and "outside" in p.stderr, p.stderr
    assert list((tmp_path / "host-mods").iterdir()) == []


def test_missing_modules_dir_is_one_line(tmp_path):
    root = fake_dracut(tmp_path)
    (root / "usr/share/pkgconfig/dracut.pc").write_text("dracutmodulesdir=/opt/none\n")
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and "/opt/none" in p.stderr, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="drops from root to nobody")
@pytest.mark.parametrize("action", ["install", "uninstall"])
def test_non_root_is_one_line(action):
    d = tempfile.mkdtemp()  # readable by nobody, writable by root only
    try:
        os.chmod(d, 0o755)
        root = fake_dracut(Path(d))
        if action == "uninstall":
            dracut.install(root)
        p = as_nobody("dracut", action, "--root", str(root))
        assert one_line_error(p) and "root" in p.stderr, p.stderr
        assert (root / MODS / "95footprint").exists() == (action == "uninstall")
    finally:
        shutil.rmtree(d)


# Imports first (the interpreter's files may be unreadable to nobody), then drop to 65534.
AS_NOBODY = """
import os, sys
import tracer.cli, tracer.commands, tracer.dracut, tempfile, shutil, errno, stat
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
sys.argv[0] = "footprint"
tracer.cli.main()
"""


def as_nobody(*args):
    return subprocess.run([sys.executable, "-c", AS_NOBODY, *args], capture_output=True, text=True)


def test_fallback_modules_dir_through_a_symlink_out_of_root_is_refused(tmp_path):
    """No dracut.pc: the default usr/lib/dracut/modules.d is checked like a dracut.pc value."""
    host = fake_dracut(tmp_path / "host", pc=False)
    root = tmp_path / "root"
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/dracut").symlink_to(host / "usr/lib/dracut")  # absolute: the host's
    p = footprint("dracut", "install", "--root", str(root))
    assert one_line_error(p) and "outside" in p.stderr, p.stderr
    assert list((host / "usr/lib/dracut/modules.d").iterdir()) == []
