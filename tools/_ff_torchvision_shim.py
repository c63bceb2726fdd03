"""Let PyPI's CUDA build of torchvision import over a CPU-only torch.

Installed into site-packages (with a ``.pth`` line that imports it) by ``tools/fix_torchvision.py``, and only on
machines where ``import torchvision`` fails with "operator torchvision::nms does not exist".

Why: the CUDA torchvision wheel ships a C extension (``torchvision/_C.so``) that cannot load over a CPU torch.
torchvision then runs without its custom ops, which is fine for everything this project uses (models, transforms),
except that ``torchvision/_meta_registrations.py`` unconditionally registers fake kernels for ``torchvision::nms``
and ``torchvision::qnms``, which raises because those operators were never defined.

What: a ``sys.meta_path`` finder waits for ``torchvision._meta_registrations`` to be imported. Just before it runs,
if (and only if) torchvision's extension failed to load, the two operator schemas are defined (without kernels:
``torchvision.ops.nms`` still says the C++ ops are missing) so the registration succeeds. Where the extension loads normally, this does nothing. Importing this
module costs nothing measurable: it does not import torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision._meta_registrations"
_LIBS: list = []  # keep torch.library.Library objects alive (dropping them removes the definitions)


def _define_missing_ops() -> None:
    extension = sys.modules.get("torchvision.extension")
    if extension is None or extension._has_ops():
        return  # the C extension loaded: nothing to do
    import torch

    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module) -> None:
        _define_missing_ops()
        self._inner.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())
