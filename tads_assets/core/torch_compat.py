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
