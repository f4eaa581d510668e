"""Make PyPI's torchvision importable beside the CPU-only torch wheel.

The torchvision wheel built for torch 2.13 on PyPI is a CUDA build: its compiled extension (`_C.so`)
links against `libtorch_cuda.so`, which the CPU torch wheel does not ship, so the extension cannot load.
torchvision copes with that for most operators, but `torchvision/_meta_registrations.py` registers fake
kernels for `torchvision::nms` and `torchvision::qnms` unconditionally, and that raises
"operator torchvision::nms does not exist" at `import torchvision`.

When (and only when) the extension cannot load, we declare those two operator schemas ourselves, with
no kernels. `import torchvision` then succeeds and everything that does not need the compiled ops —
`torchvision.transforms` (what open_clip uses), models, datasets — works on CPU. Calling
`torchvision.ops.nms` still fails loudly ("no kernel registered"), which is the truth.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the life of the process


def torchvision_extension_loads() -> bool:
    """True when torchvision's compiled extension loads against the installed torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    for candidate in sorted(Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, ImportError):
            continue
    return False


def ensure_torchvision_importable() -> None:
    """Declare torchvision's nms/qnms schemas when its CUDA-built extension cannot load on this torch."""
    global _library
    if _library is not None or "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is None or torchvision_extension_loads():
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - schema-only library
    for schema in _SCHEMAS:
        _library.define(schema)
    log.debug("torchvision C++ ops unavailable on this torch build; declared nms/qnms schemas only")


class _ShimBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs `ensure_torchvision_importable` just before the first `import torchvision`, so importing TADS does not
    import torch itself (the `tads` CLI's explain/ledger start in a fraction of a second)."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            uninstall_lazy_shim()
            ensure_torchvision_importable()
        return None  # the regular finders import it


def install_lazy_shim() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _ShimBeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _ShimBeforeTorchvision())


def uninstall_lazy_shim() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ShimBeforeTorchvision)]
