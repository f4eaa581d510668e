"""TADS: Task-Aware Data Selection as a Dagster code location."""

from tads_assets.core.torch_compat import ensure_torchvision_importable

ensure_torchvision_importable()
