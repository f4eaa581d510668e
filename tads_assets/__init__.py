"""TADS: Task-Aware Data Selection as a Dagster code location."""

from tads_assets.core.malloc import keep_freed_memory
from tads_assets.core.torch_compat import install_lazy_shim

# torchvision needs a shim on the CPU torch wheel; it runs on the first `import torchvision` (via open_clip)
install_lazy_shim()
# tensors allocated anew at every training step would otherwise page-fault every step (core/malloc.py)
keep_freed_memory()
