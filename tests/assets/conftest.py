"""The small demo graph materialized once per test session, shared by the asset tests that need all of it."""

import polars as pl
import pytest
from tads_assets.local import RANGE_END, RANGE_START, materialize

from resources import TadsPaths, tads_resources
from tads_assets.characterize import (cluster_diversity, feature_table, quality_scores, relevance_vectors, task_set,
                                      weak_labels)
from tads_assets.checks import baseline_subsets_ledger_complete, final_subset_ledger_complete, trained_dvn_scores_valid
from tads_assets.core.harness import baselines
from tads_assets.pool import clip_encoder, deduped_pool, pool_embeddings, raw_pool
from tads_assets.select import STATIC_ABLATIONS, baseline_subsets, final_subset, trained_dvn
from tads_assets.train_eval import benchmark_scores, trained_clip

UPSTREAM = [raw_pool, clip_encoder, pool_embeddings, deduped_pool, feature_table, weak_labels, quality_scores,
            task_set, relevance_vectors, cluster_diversity]
TRAIN = {"ops": {"trained_clip": {"config": {"budget_samples_seen": 256, "batch_size": 64, "warmup_steps": 1}}}}
TRAIN_TWO_SEEDS = {"ops": {"trained_clip": {"config": {**TRAIN["ops"]["trained_clip"]["config"], "repeats": 2}}}}
# A short Algorithm 1 on the 400-sample pool: 3 meta-iterations over 6 clusters, one 20-step proxy per reward,
# the task alignment's target CLIP trained for 8192 samples seen (at 4096 it stayed at chance on every task once
# lf_ungrounded left the LabelModel: the run then fails, saying so).
DVN = {"ops": {"trained_dvn": {"config": {"meta_iterations": 3, "fdo_clusters": 6, "probe_clusters": 6,
                                          "reward_repeats": 1, "proxy_steps": 20, "validation_items": 100,
                                          "target_budget_samples_seen": 8192}},
               "final_subset": {"config": {"export": True}}}}
SELECT = [trained_dvn, final_subset, trained_dvn_scores_valid, final_subset_ledger_complete]


@pytest.fixture(scope="session")
def built(tmp_path_factory, demo_spec, demo_dir):
    home = tmp_path_factory.mktemp("train_eval")
    resources = resources_for(home, demo_spec, str(demo_dir / "tasks.yaml"))
    runs = {"upstream": materialize(UPSTREAM, resources=resources)}
    assert runs["upstream"].success
    runs["select"] = materialize([*UPSTREAM, *SELECT], selection=[trained_dvn.key, final_subset.key],
                                 resources=resources, run_config=DVN)
    # every baseline partition in one run (one step: BackfillPolicy.single_run), as `tads run` does
    methods = (*baselines.METHODS, *STATIC_ABLATIONS)
    runs["baselines"] = materialize([*UPSTREAM, baseline_subsets, baseline_subsets_ledger_complete],
                                    selection=[baseline_subsets.key], resources=resources,
                                    tags={RANGE_START: methods[0], RANGE_END: methods[-1]})
    runs.update({method: runs["baselines"] for method in methods})
    # two partitions in one run, one in a run of its own
    train = [*UPSTREAM, *SELECT[:2], baseline_subsets, trained_clip]
    runs["train_tads"] = runs["train_no_filter"] = materialize(
        train, selection=[trained_clip.key], resources=resources, run_config=TRAIN,
        tags={RANGE_START: "tads", RANGE_END: "no_filter"})
    runs["train_clip_score"] = materialize(train, selection=[trained_clip.key], resources=resources,
                                           partition_key="clip_score", run_config=TRAIN_TWO_SEEDS)
    runs["benchmark"] = materialize([*UPSTREAM, *SELECT[:2], baseline_subsets, trained_clip, benchmark_scores],
                                    selection=[benchmark_scores.key], resources=resources)
    truth = pl.read_parquet(demo_dir / "truth.parquet").select("uid", "kind", "source")
    return resources["paths"], runs, truth




def resources_for(home, pool: str, tasks: str) -> dict:
    """The resources of a run writing under `home`."""
    return tads_resources(TadsPaths(home=str(home), pool=pool, tasks=tasks))


def metadata_values(result, node: str) -> dict:
    """The plain values of the first materialization's metadata of `node` in a run."""
    return {k: getattr(v, "value", v) for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}
