"""Shared fixtures: one small demo pool per test session, and helpers to write WebDataset shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

import tads_assets  # noqa: F401  (torchvision import shim before anything imports open_clip)
from tads_assets.core.demo.demo_pool import DemoConfig, generate_demo_pool
from tads_assets.core.demo.hostile import tar_bytes

SMALL_DEMO = DemoConfig(
    n_samples=400, seed=3, shard_size=100,
    fashion_val=30, fashion_test=40, digits_val=20, digits_test=20, captions_val=20, captions_test=40,
)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "pool_demo"
    generate_demo_pool(out, SMALL_DEMO)
    return out


@pytest.fixture(scope="session")
def demo_spec(demo_dir) -> str:
    return f"webdataset:{demo_dir}/pool/{{00000..00003}}.tar"


def image_bytes(color=(200, 30, 30), size=(32, 24), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tar_bytes(members))
    return path


def wds_sample(key: str, caption: bytes | str | None = "a red square", image: bytes | None = None,
               url: str | None = None, ext: str = "jpg") -> list[tuple[str, bytes]]:
    members = []
    if image is not False:
        members.append((f"{key}.{ext}", image if image is not None else image_bytes()))
    if caption is not None:
        members.append((f"{key}.txt", caption.encode() if isinstance(caption, str) else caption))
    members.append((f"{key}.json", json.dumps({"url": url or f"https://example.com/{key}.jpg"}).encode()))
    return members


def step_error_message(result) -> str:
    """The message of the exception an asset raised in a failed in-process run (Dagster's wrappers unwrapped)."""
    err = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error
    while err.cause is not None and err.cls_name.startswith("Dagster"):
        err = err.cause
    return err.message
