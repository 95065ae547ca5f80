"""Build hook only (the metadata is in pyproject.toml): a wheel carries footprint's CO-RE
BPF objects, built by scripts/build-bpf into the wheel's tree. Without clang or bpftool
the build stops with one line saying so; FOOTPRINT_NO_BPF_OBJECT=1 builds a wheel
without the object (bcc loader only)."""

import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithBpfObject(build_py):
    def run(self):
        super().run()
        # An editable install finds bpf/*.bpf.o in the checkout (scripts/setup).
        if getattr(self, "editable_mode", False) or os.environ.get("FOOTPRINT_NO_BPF_OBJECT"):
            return
        out = Path(self.build_lib, "tracer", "bpf")
        done = subprocess.run(["bash", str(HERE / "scripts" / "build-bpf"), str(out)],
                              stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["scripts/build-bpf failed"]
            raise SystemExit(f"footprint: no BPF object for the wheel: {lines[-1]}")


setup(cmdclass={"build_py": BuildPyWithBpfObject})
