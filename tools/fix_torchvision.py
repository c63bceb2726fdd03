"""Make ``import torchvision`` work over a CPU-only torch, only where it is broken.

Run by ``make install`` with the virtual environment's python. If torchvision imports (or is absent), nothing is
written. If it fails with the known "operator torchvision::nms does not exist" error (PyPI's CUDA torchvision over
CPU torch), ``_ff_torchvision_shim.py`` and a ``.pth`` line importing it are installed into site-packages, and the
import is checked again. Any other failure is reported, not patched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

KNOWN = "torchvision::nms does not exist"
HERE = Path(__file__).resolve().parent


def _import_error() -> str | None:
    proc = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, check=False)
    return None if proc.returncode == 0 else proc.stderr.strip()


def main() -> int:
    err = _import_error()
    if err is None:
        print("torchvision: imports normally, no workaround needed")
        return 0
    if "No module named 'torchvision'" in err:
        print("torchvision: not installed, nothing to do")
        return 0
    if KNOWN not in err:
        print(f"torchvision: import fails for an unknown reason, not patching:\n{err}", file=sys.stderr)
        return 1
    site = Path(sysconfig.get_paths()["purelib"])
    shutil.copyfile(HERE / "_ff_torchvision_shim.py", site / "_ff_torchvision_shim.py")
    (site / "ff_torchvision_shim.pth").write_text("import _ff_torchvision_shim\n")
    err = _import_error()
    if err is not None:
        print(f"torchvision: still broken after the shim:\n{err}", file=sys.stderr)
        return 1
    print("torchvision: C extension unavailable (CUDA wheel over CPU torch); installed the op-schema shim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
