"""TADS: Task-Aware Data Selection as a Dagster code location."""

from tads_assets.core.torch_compat import install_lazy_shim

# torchvision needs a shim on the CPU torch wheel; it runs on the first `import torchvision` (via open_clip)
install_lazy_shim()
