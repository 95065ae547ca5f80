"""`footprint dracut install|uninstall` against system trees: a scratch tree laid out like
dracut 059's, an old dracut, none at all. (Booting an initramfs built from the installed
module is tests/test_early_boot.py.)"""

from __future__ import annotations

import subprocess
import sys

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
    assert sorted(f.name for f in dest.iterdir()) == sorted(f.name for f in dracut.module_source().iterdir())
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
