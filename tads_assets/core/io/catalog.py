"""The catalogue of stage outputs: where every asset's output lives under TADS_HOME, as typed handles.

This is the one place that knows the layout on disk. Assets receive the handles of their upstream outputs as
parameters (the Dagster IO manager in `resources` hands them over) and take their own from `Catalog.of`;
the CLI, checks and benchmarks open a `Catalog(home)` and read through the same handles. A handle holds a
location, never the data: reading is explicit (`read`, `scan`, `pairs`, ...), and reading an output that
was never written fails naming the asset to materialize.

    TADS_HOME/
      parquet/<asset>/...   Parquet outputs          lance/        LanceDB tables (embeddings, relevance_vectors)
      models/<asset>/...    checkpoints              cache/        frozen features, operator parts
      ledger/               the decisions ledger     reports/      benchmark.{md,json,png}
      exports/<method>/     WebDataset + CSV         locks/        one lock per output being written
      demo/                 the generated demo pool
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from tads_assets.core.io.embeddings import (EMBEDDINGS_TABLE, RELEVANCE_TABLE, arrays, raw_pool_parts, read_embeddings,
                                            read_relevance_table)
from tads_assets.core.io.ingest import read_manifest, scan_raw_pool
from tads_assets.core.io.storage import LOCKS_DIR
from tads_assets.core.io.tasks import Task
from tads_assets.core.method.dvn import DVN_CHECKPOINT
from tads_assets.core.method.encoder import read_encoder_info


@dataclass(frozen=True)
class Output:
    """One asset's output."""

    asset: str

    def missing(self, path: Path) -> FileNotFoundError:
        return FileNotFoundError(f"{path} missing: materialize {self.asset} first")


@dataclass(frozen=True)
class Table(Output):
    """One Parquet file."""

    path: Path

    @property
    def dir(self) -> Path:
        return self.path.parent

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, columns: list[str] | None = None) -> pl.DataFrame:
        if not self.path.exists():
            raise self.missing(self.path)
        return pl.read_parquet(self.path, columns=columns)

    def scan(self) -> pl.LazyFrame:
        if not self.path.exists():
            raise self.missing(self.path)
        return pl.scan_parquet(self.path)

    def uids(self) -> list[str]:
        return self.read(["uid"])["uid"].to_list()

    def height(self) -> int:
        return self.scan().select(pl.len()).collect().item()

    def manifest(self) -> dict:
        """The `_manifest.json` the asset wrote beside the table (its run id, counts and settings)."""
        path = self.dir / "_manifest.json"
        if not path.exists():
            raise self.missing(path)
        return json.loads(path.read_text())


@dataclass(frozen=True)
class RawPool(Output):
    """raw_pool: Parquet parts (one per source shard or chunk) and the ingestion manifest."""

    dir: Path

    def scan(self) -> pl.LazyFrame:
        return scan_raw_pool(self.dir)

    def parts(self) -> list[Path]:
        return raw_pool_parts(self.dir)

    def part(self, name: str) -> Path:
        """One part by name; a part that is gone (the pool was re-ingested since) is named in the error."""
        path = self.dir / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"raw_pool has no part {name} (it was re-ingested since the partition was "
                                    "registered): materialize raw_pool, then the current partitions")
        return path

    def manifest(self) -> dict:
        return read_manifest(self.dir)

    def height(self) -> int:
        """Rows over every part."""
        return self.scan().select(pl.len()).collect().item()

    def rows(self, uids: list[str], columns: tuple[str, ...] = ("caption", "bytes", "format")) -> pl.DataFrame:
        """uid and `columns` of the given samples, in the given order (null where a uid is not in the pool)."""
        want = pl.DataFrame({"uid": list(uids)}, schema={"uid": pl.Utf8})
        frame = self.scan().select("uid", *columns).join(want.lazy(), on="uid", how="semi").collect()
        return want.join(frame, on="uid", how="left", maintain_order="left")

    def captions(self, uids: list[str]) -> list[str]:
        return self.rows(uids, ("caption",))["caption"].to_list()


@dataclass(frozen=True)
class LanceTable(Output):
    """A LanceDB table under TADS_HOME/lance."""

    uri: Path
    name: str

    def connect(self):
        import lancedb

        self.uri.mkdir(parents=True, exist_ok=True)
        return lancedb.connect(str(self.uri))

    @property
    def label(self) -> str:
        return f"{self.uri}::{self.name}"


@dataclass(frozen=True)
class PoolEmbeddings(LanceTable):
    """pool_embeddings: uid, image_vec, text_vec, flipped_image_vec, heldout_pair_cos, written per part."""

    def read(self, columns: tuple[str, ...] = ("uid", "image_vec", "text_vec", "flipped_image_vec"),
             uids: list[str] | None = None, part: str | None = None) -> pl.DataFrame:
        return read_embeddings(self.connect(), columns, uids=uids, part=part)

    def aligned(self, uids: list[str], *columns: str) -> list[np.ndarray]:
        """The `columns` of the given samples as arrays, row-aligned with `uids`."""
        frame = pl.DataFrame({"uid": list(uids)}, schema={"uid": pl.Utf8}).join(
            self.read(("uid", *columns)), on="uid", how="left", maintain_order="left")
        return arrays(frame, *columns)


@dataclass(frozen=True)
class RelevanceVectors(LanceTable):
    """relevance_vectors: uid, r (eq. 10, one value per task), h_r (eq. 11), the task order and hash."""

    def read(self):
        """(uids, r, h_r, task names)."""
        return read_relevance_table(self.connect())


@dataclass(frozen=True)
class ModelDir(Output):
    """A folder of checkpoints an asset writes under TADS_HOME/models."""

    dir: Path

    def file(self, name: str) -> Path:
        return self.dir / name


@dataclass(frozen=True)
class CacheDir(Output):
    """A per-part cache under TADS_HOME/cache, one Parquet file per raw_pool part."""

    dir: Path

    def part(self, name: str) -> Path:
        """The cache file of the raw_pool part `name` (a part's stem, or its file name)."""
        return self.dir / f"{Path(name).stem}.parquet"


@dataclass(frozen=True)
class ClipEncoderDir(ModelDir):
    """clip_encoder: encoder.json (kind, id, head files) and the builtin encoder's heads."""

    def info(self) -> dict:
        return read_encoder_info(self.dir)

    def is_builtin(self) -> bool:
        return self.info()["kind"] == "builtin"


@dataclass(frozen=True)
class FeatureTable(Table):
    """feature_table: one row per deduplicated sample, one column per §3.2.1 operator; beside it the
    concreteness rater and the operator settings quality_scores reuses for its synthetic pairs."""

    models: Path

    @property
    def rater_path(self) -> Path:
        return self.models / "concreteness.safetensors"

    @property
    def params_path(self) -> Path:
        return self.models / "operator_params.json"

    def operator_params(self) -> dict:
        if not self.params_path.exists():
            raise FileNotFoundError(f"{self.params_path} missing (written by an older feature_table): "
                                    "materialize feature_table again")
        return json.loads(self.params_path.read_text())


@dataclass(frozen=True)
class QualityScores(Table):
    """quality_scores: uid, quality (q_φ ∈ [0, 1]); the checkpoint beside it."""

    checkpoint: Path


@dataclass(frozen=True)
class TaskSetFile(Output):
    """task_set: the validated task set as JSON (path, sha256, tasks)."""

    path: Path

    def read(self) -> tuple[list, str]:
        """The tasks and the task file's sha256."""
        if not self.path.exists():
            raise self.missing(self.path)
        doc = json.loads(self.path.read_text())
        return [Task.from_dict(t) for t in doc["tasks"]], doc["sha256"]


@dataclass(frozen=True)
class DvnScores(Table):
    """trained_dvn: uid, v, fdo_cluster for every deduplicated sample; the DVN checkpoint in `models`."""

    models: Path

    @property
    def checkpoint(self) -> Path:
        return self.models / DVN_CHECKPOINT


@dataclass(frozen=True)
class Subsets(Output):
    """Every method's selected uids: `tads` is final_subset, the others baseline_subsets[method]."""

    final: Table
    baselines: Path

    def of(self, method: str) -> Table:
        if method == "tads":
            return self.final
        return Table(f"baseline_subsets[{method}]", self.baselines / method / "subset.parquet")


@dataclass(frozen=True)
class TrainedClips(Output):
    """trained_clip: one checkpoint folder per method; with `repeats` > 1 the further training seeds' folders
    under `repeats/METHOD/I` (the first seed's stays where a single run's is)."""

    dir: Path

    def of(self, method: str, repeat: int = 0) -> Path:
        return self.dir / method if repeat == 0 else self.dir / "repeats" / method / str(repeat)


@dataclass(frozen=True)
class Reports(Output):
    """benchmark_scores: TADS_HOME/reports/benchmark.{md,json,png}."""

    dir: Path

    def file(self, suffix: str) -> Path:
        return self.dir / f"benchmark.{suffix}"


class Catalog:
    """Every stage output of one TADS_HOME. `of(asset)` is the handle of an asset by name."""

    def __init__(self, home: str | Path):
        self.root = Path(home).expanduser().resolve()
        r, parquet, models, lance = self.root, self.root / "parquet", self.root / "models", self.root / "lance"
        self.ledger_dir, self.lance_dir, self.models_dir = r / "ledger", lance, models
        self.parquet_dir = parquet  # the root of every Parquet output
        self.demo_dir, self.exports_dir, self.locks_dir = r / "demo", r / "exports", r / LOCKS_DIR
        self.frozen_cache_dir = r / "cache" / "frozen_features"  # the builtin towers' features, one file per part
        self.feature_parts_dir = r / "cache" / "feature_parts"  # the operators' per-part results
        self.target_cache_dir = r / "cache" / "target_alignment"  # task alignment's target scores, by their inputs' hash
        self.raw_pool = RawPool("raw_pool", parquet / "raw_pool")
        self.frozen_features = CacheDir("frozen_features", self.frozen_cache_dir)
        self.clip_encoder = ClipEncoderDir("clip_encoder", models / "clip_encoder")
        self.pool_embeddings = PoolEmbeddings("pool_embeddings", lance, EMBEDDINGS_TABLE)
        self.deduped_pool = Table("deduped_pool", parquet / "deduped_pool" / "deduped_pool.parquet")
        self.operator_features = CacheDir("operator_features", self.feature_parts_dir)
        self.feature_table = FeatureTable("feature_table", parquet / "feature_table" / "feature_table.parquet",
                                          models / "feature_table")
        self.weak_labels = Table("weak_labels", parquet / "weak_labels" / "weak_labels.parquet")
        self.quality_scores = QualityScores("quality_scores", parquet / "quality_scores" / "quality_scores.parquet",
                                            models / "quality_scores" / "q_phi.safetensors")
        self.task_set = TaskSetFile("task_set", parquet / "task_set" / "task_set.json")
        self.relevance_vectors = RelevanceVectors("relevance_vectors", lance, RELEVANCE_TABLE)
        self.cluster_diversity = Table("cluster_diversity", parquet / "cluster_diversity" / "cluster_diversity.parquet")
        self.trained_dvn = DvnScores("trained_dvn", parquet / "trained_dvn" / "dvn_scores.parquet",
                                     models / "trained_dvn")
        self.final_subset = Table("final_subset", parquet / "final_subset" / "final_subset.parquet")
        self.baseline_subsets = Subsets("baseline_subsets", self.final_subset, parquet / "baseline_subsets")
        self.subsets = self.baseline_subsets
        self.trained_clip = TrainedClips("trained_clip", models / "trained_clip")
        self.benchmark_scores = Reports("benchmark_scores", r / "reports")

    @property
    def assets(self) -> list[str]:
        """Every asset the catalogue holds an output for."""
        return [name for name, v in vars(self).items() if isinstance(v, Output) and v.asset == name]

    def of(self, asset: str) -> Output:
        if asset not in self.assets:
            raise KeyError(f"no stage output named {asset!r}; the catalogue holds {', '.join(self.assets)}")
        return getattr(self, asset)

    def parquet_outputs(self) -> list[Path]:
        """Every folder holding Parquet output, for listing (`tads status`)."""
        base = self.parquet_dir
        return sorted({f.parent for f in base.rglob("*.parquet") if not f.name.startswith(".")}) if base.exists() else []

    def export_dir(self, method: str) -> Path:
        return self.exports_dir / method
