"""task_set, relevance_vectors, cluster_diversity, trained_dvn, final_subset, baseline_subsets, trained_clip
and benchmark_scores materialized on the small demo pool."""

import json
import re
import shutil

import numpy as np
import polars as pl
import pytest
from tads_assets.local import materialize

from resources import TadsPaths, tads_resources
from tads_assets.characterize import task_set
from tads_assets.core.harness import baselines
from tads_assets.select import STATIC_ABLATIONS
from tads_assets.core.io import embeddings as lance_tables
from tads_assets.core.io.catalog import Catalog
from tads_assets.core.io.ledger import Ledger
from tads_assets.select import baseline_subsets, trained_dvn
from tads_assets.train_eval import checkpoints, trained_clip
from tests.assets.conftest import DVN, SELECT, TRAIN_TWO_SEEDS, UPSTREAM, resources_for
from tads_assets.core.io.tasks import task_set_hash


def _subset(paths, method):
    return pl.read_parquet(paths.catalog.subsets.of(method).path)


def test_every_baseline_partition_accounts_for_its_drops(built):
    paths, runs, _ = built
    n_pool = pl.scan_parquet(str(paths.catalog.raw_pool.dir / "*.parquet")).select(pl.len()).collect().item()
    size = pl.read_parquet(paths.catalog.final_subset.path).height  # matched to TADS
    for method in (*baselines.METHODS, *STATIC_ABLATIONS):
        assert runs[method].success
        checks = {e.check_name: e.passed for e in runs[method].get_asset_check_evaluations()}
        assert checks == {"baseline_subsets_ledger_complete": True}, method
        kept = _subset(paths, method)
        drops = Ledger(paths.catalog.ledger_dir).read(f"baseline_{method}")
        assert not set(kept["uid"]) & set(drops["uid"])
        if method in ("random", "clip_score", "semdedup", "dbp", *STATIC_ABLATIONS):
            assert kept.height == size, method  # the size-matched methods are compared at equal size
    assert _subset(paths, "no_filter").height == n_pool


def test_a_run_over_many_partitions_records_each_with_its_own_metadata(built):
    # one run, one step for all baseline partitions (and for two trained_clip partitions): the UI still shows
    # every partition materialized, each with the metadata of its own method
    paths, runs, _ = built
    for run, node, expected in ((runs["baselines"], "baseline_subsets", [*baselines.METHODS, *STATIC_ABLATIONS]),
                                (runs["train_tads"], "trained_clip", ["tads", "no_filter"])):
        steps = [e.step_key for e in run.all_events if e.event_type_value == "STEP_SUCCESS"]
        assert [k for k in steps if not k.startswith(f"{node}_")] == [node]  # one step (its checks aside)
        mats = run.asset_materializations_for_node(node)
        assert sorted(m.partition for m in mats) == sorted(expected)  # every partition once
        assert all(m.metadata["method"].value == m.partition for m in mats)  # each with its own metadata
        assert len({m.metadata["n_out"].value for m in mats}) > 1 or node == "trained_clip"
    sizes = {m.partition: m.metadata["n_out"].value for m in runs["baselines"].asset_materializations_for_node("baseline_subsets")}
    assert sizes["no_filter"] == _subset(paths, "no_filter").height and sizes["random"] == _subset(paths, "random").height


def test_clip_score_and_quality_only_drop_the_known_bad_pairs(built):
    paths, _, truth = built

    def share(method, kind):
        return _subset(paths, method).join(truth, on="uid")["kind"].eq(kind).mean()

    pool = truth.filter(pl.col("kind").is_in(["corrupt_image", "empty_caption"]).not_())["kind"].eq("misaligned").mean()
    assert share("clip_score", "misaligned") < 0.5 * pool
    # quality_only selects from the deduplicated pool; on 400 samples q_φ learns the image/language defects
    # (tests/assets/test_quality_assets.py), misalignment only at the 10k scale (benchmarks/quality_quality.py)
    defects = ["blurred", "non_english", "low_resolution", "text_heavy"]
    q = pl.read_parquet(paths.catalog.quality_scores.path).join(truth, on="uid")
    kept = _subset(paths, "quality_only").join(truth, on="uid")
    # measured on this 400-sample pool: 9.6 % defects kept against 15.2 % in the deduplicated pool (0.63x) since the
    # text_and_image dedup rule keeps distinct pictures under one caption (before it: under 0.5x of a smaller pool)
    assert kept["kind"].is_in(defects).mean() < 0.75 * q["kind"].is_in(defects).mean()


def test_trained_clip_spends_the_same_budget_and_benchmark_reports_every_trained_method(built):
    paths, runs, _ = built
    seen = {}
    for method in ("tads", "no_filter", "clip_score"):
        assert runs[f"train_{method}"].success
        info = json.loads((paths.catalog.models_dir / "trained_clip" / method / "train_info.json").read_text())
        seen[method] = info["samples_seen"]
    assert seen["tads"] == seen["no_filter"] == seen["clip_score"] == 256
    assert runs["benchmark"].success
    report = json.loads((paths.catalog.benchmark_scores.file("json")).read_text())
    methods = [r["method"] for r in report["rows"]]
    assert methods == ["tads", "no_filter", "clip_score", "chance"]
    assert set(report["not_trained"]) == {"random", "semdedup", "dbp", "quality_only", *STATIC_ABLATIONS}
    for row in report["rows"]:
        assert np.isfinite(row["average"]) and 0 <= row["average"] <= 100
    chance = report["rows"][-1]
    # 256 samples seen from a 400-sample pool: a class name is met 30 times (expected) only if it is in 47 of the 400
    # captions, which no garment class is, so the fashion task has no zero-shot column (NAMING_RULE; the digits are
    # in many prices and sizes) and the average is over the columns that are defined
    columns = {k: v for k, v in chance.items() if "/" in k}
    assert "fashion/top1" not in columns and {"captions/i2t_r1", "captions/t2i_r1"} <= set(columns)
    assert chance["average"] == pytest.approx(np.mean(list(columns.values())))
    assert (paths.catalog.benchmark_scores.file("md")).read_text().startswith("# Zero-shot benchmark")
    defined = report["metric_definitions"]  # the report states how each metric was defined
    assert defined["tasks"]["fashion"]["classes"] == 10 and "trouser" in defined["tasks"]["fashion"]["unnamed_classes"]
    assert "caption identity" in defined["retrieval"] and "samples seen" in defined["naming"]
    assert defined["tasks"]["captions"]["distinct_captions"] <= defined["tasks"]["captions"]["images"]
    assert (paths.catalog.benchmark_scores.file("png")).read_bytes()[:4] == b"\x89PNG"


def test_trained_clip_repeats_train_each_seed_keep_what_is_unchanged_and_benchmark_averages_them(built, tmp_path):
    paths, runs, _ = built
    cat = paths.catalog
    infos = [json.loads((cat.trained_clip.of("clip_score", r) / "train_info.json").read_text()) for r in (0, 1)]
    assert [i["params"]["seed"] for i in infos] == [0, 1] and infos[0]["key"] != infos[1]["key"]
    assert infos[0]["repeat_keys"] == [infos[0]["key"], infos[1]["key"]]
    mat = runs["train_clip_score"].asset_materializations_for_node("trained_clip")[0].metadata
    assert (mat["repeats"].value, mat["trained"].value, mat["kept"].value) == (2, 2, 0)
    rows = {r["method"]: r for r in json.loads(cat.benchmark_scores.file("json").read_text())["rows"]}
    two, one = rows["clip_score"], rows["tads"]
    assert two["repeats"] == 2 and len(two["average_runs"]) == 2
    assert two["average"] == pytest.approx(np.mean(two["average_runs"]))
    assert two["average_sd"] == pytest.approx(np.std(two["average_runs"], ddof=1))
    assert one["repeats"] == 1 and one["average_sd"] is None and one["average_runs"] == [one["average"]]
    # the same subset, recipe and seeds again: both checkpoints kept, not trained again
    weights = [cat.trained_clip.of("clip_score", r) / "model.safetensors" for r in (0, 1)]
    stamps = [w.stat().st_mtime_ns for w in weights]
    again = materialize([*UPSTREAM, *SELECT[:2], baseline_subsets, trained_clip], selection=[trained_clip.key],
                        resources=tads_resources(paths), partition_key="clip_score",
                        run_config=TRAIN_TWO_SEEDS)
    meta = again.asset_materializations_for_node("trained_clip")[0].metadata
    assert (meta["trained"].value, meta["kept"].value) == (0, 2)
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    # a further seed's folder from another subset or recipe is never averaged in silently
    shutil.copytree(cat.trained_clip.dir, tmp_path / "models" / "trained_clip")
    copy = Catalog(tmp_path)
    stale = copy.trained_clip.of("clip_score", 1) / "train_info.json"
    stale.write_text(json.dumps({**infos[1], "key": "another subset"}))
    assert len(checkpoints(copy, "tads")) == 1
    with pytest.raises(FileNotFoundError, match=r"trained_clip\[clip_score\].*seed 1"):
        checkpoints(copy, "clip_score")


def test_task_set_versions_by_content_and_relevance_points_digits_at_the_digit_task(built):
    paths, runs, truth = built
    mat = runs["upstream"].asset_materializations_for_node("task_set")[0]
    assert mat.tags["dagster/data_version"] == task_set_hash(paths.tasks_path())
    import lancedb

    uids, r, h, names = lance_tables.read_relevance_table(lancedb.connect(str(paths.catalog.lance_dir)))
    assert names == ["fashion", "digits", "captions"] and r.shape == (len(uids), 3)
    assert np.allclose(np.linalg.norm(h, axis=1), 1.0, atol=1e-4)
    frame = pl.DataFrame({"uid": uids, "r_fashion": r[:, 0], "r_digits": r[:, 1]}).join(truth, on="uid")
    clean = frame.filter(pl.col("kind") == "clean")
    digits, fashion = clean.filter(pl.col("source") == "digits"), clean.filter(pl.col("source") == "fashion")
    # a digit is closer to the digit task than garments are, and a garment closer to the fashion task than digits are
    assert digits["r_digits"].mean() > fashion["r_digits"].mean() + 0.05
    assert fashion["r_fashion"].mean() > digits["r_fashion"].mean() + 0.05


def test_cluster_diversity_weights_small_clusters_up(built):
    paths, _, _ = built
    d = pl.read_parquet(paths.catalog.cluster_diversity.path)
    kept = pl.read_parquet(paths.catalog.deduped_pool.path, columns=["uid"])
    assert set(d["uid"]) == set(kept["uid"])
    sizes = d.group_by("cluster").agg(pl.len().alias("n"), pl.col("cluster_size").first(), pl.col("diversity").first())
    assert (sizes["n"] == sizes["cluster_size"]).all()
    ordered = sizes.sort("cluster_size")
    assert ordered["diversity"][0] >= ordered["diversity"][-1]
    assert np.allclose(d["diversity"], (1.0 / (d["cluster_size"].to_numpy() + 1e-6)) ** 0.5, rtol=1e-5)


def test_a_bad_task_file_fails_task_set_naming_the_field(tmp_path, demo_dir):
    bad = tmp_path / "tasks.yaml"
    text = (demo_dir / "tasks.yaml").read_text().replace("webdataset:", f"webdataset:{demo_dir}/")
    bad.write_text(text.replace("kind: retrieval", "kind: captioning"))
    resources = {"paths": TadsPaths(home=str(tmp_path / "home"), tasks=str(bad))}
    with pytest.raises(Exception, match=r"task 'captions'\.kind: 'captioning' is not one of"):
        materialize([task_set], resources=resources)


def test_trained_dvn_and_final_subset_select_at_most_the_budget_and_account_for_the_rest(built):
    paths, runs, truth = built
    assert runs["select"].success
    checks = {e.check_name: e.passed for e in runs["select"].get_asset_check_evaluations()}
    assert checks == {"trained_dvn_scores_valid": True, "final_subset_ledger_complete": True}
    info = json.loads((paths.catalog.models_dir / "trained_dvn" / "dvn_info.json").read_text())
    assert len(info["history"]) == 3 and info["tasks"] == ["fashion", "digits", "captions"]
    assert all(len(h["advantages"]) == 6 and np.isfinite(h["reward"]) for h in info["history"])
    meta = runs["select"].asset_materializations_for_node("trained_dvn")[0].metadata
    assert {"reward_curve", "reward_top_curve", "cluster_advantages", "per_iteration", "selection_rate_curve",
            "task_alignment", "tasks_at_chance", "budget_rule", "draw_rate"} <= set(meta)
    # the head proxy on 256 principal components of each tower's features: the variance each keeps, in the UI
    assert re.fullmatch(r"image: \d+\.\d% of the variance in 256 dims, text: \d+\.\d% of the variance in 256 dims",
                        meta["proxy_features"].value)
    # the reward's task weights: each φ_k times how much of the proxy's gain over chance the target reaches
    align = {r["task"]: r for r in info["task_alignment"]}
    assert set(align) == {"fashion", "digits", "captions"}
    assert all(0.0 <= r["a_k"] <= 1.0 and r["φ_k in J"] == pytest.approx(r["φ_k (task file)"] * r["a_k"])
               for r in align.values())
    assert any(r["a_k"] > 0 for r in align.values())
    assert all("reward_top" in h for h in info["history"]) and np.isfinite(info["reward_top_final"])
    # the default network: the alignment stream over the held-out pair cosine; θ₀ from the candidate static row whose
    # top budget share trained the best target CLIP on the validation sets (prior "auto"), each candidate in the UI
    trials = info["prior_trials"]
    assert info["config"]["alignment_stream"] and info["prior_setting"] == "auto"
    assert [t["row"] for t in trials] == ["q_r_d_a", "q_r_a", "q_r_d", "q_r", "q", "a"]
    assert [t["row"] for t in trials if t["chosen"]] == [info["prior"]]
    assert max(trials, key=lambda t: t["J target (validation)"])["row"] == info["prior"]
    # J over chance of the tasks some candidate's target learns (the demo task file's φ_k are all 1)
    assert all(t["J target (validation)"] == pytest.approx(sum(t[f"Eval_k {k}"] - align[k]["chance"]
                                                               for k in t["tasks counted"].split(", "))) for t in trials)
    assert meta["target_models"].value == "6 trained" and len(meta["prior_choice"].value.records) == 6
    # validation scored as the benchmark scores its test sets: over the classes the pool's captions name
    scored = dict(re.findall(r"(\w+): (\d+) of \d+", meta["classes_scored"].value))
    assert set(scored) == {"fashion", "digits"} and "naming rule at 8192 samples seen" in meta["classes_scored"].value
    assert all(align[k]["chance"] == pytest.approx(1 / int(n)) for k, n in scored.items())
    sig = lance_tables.load_signals(paths.catalog.quality_scores.path, paths.catalog.relevance_vectors.connect(),
                                    paths.catalog.cluster_diversity.path, paths.catalog.pool_embeddings.connect())
    cos = lance_tables.read_embeddings(paths.catalog.pool_embeddings.connect(), ("uid", "heldout_pair_cos"))
    cos = dict(zip(cos["uid"].to_list(), cos["heldout_pair_cos"].to_list()))
    assert sig.a.tolist() == pytest.approx([cos[u] for u in sig.uids.tolist()])  # a is each pair's own cosine
    assert info["alignment_stats"] == pytest.approx([sig.a.mean(), sig.a.std() + 1e-8], rel=1e-6)
    assert meta["streams"].value.startswith("E_q, E_r, E_d, E_a")
    assert meta["init"].value.startswith(f"residual {info['prior']} (") and "chosen by the target model" in meta["init"].value
    assert "θ₀ is the row exactly" in meta["init"].value and info["config"]["prior_skip"]
    scores = pl.read_parquet(paths.catalog.trained_dvn.path)
    kept = pl.read_parquet(paths.catalog.final_subset.path)
    # the default budget: 36 % of the readable raw pool (not of what dedup left), shared with the baselines
    n_raw = paths.catalog.raw_pool.height()
    assert scores.height > round(0.36 * n_raw) and kept.height == round(0.36 * n_raw)
    final_meta = runs["select"].asset_materializations_for_node("final_subset")[0].metadata
    assert final_meta["budget_rule"].value == "0.36 of the readable raw pool"
    assert final_meta["budget_samples"].value == kept.height and final_meta["short_of_budget"].value == 0
    dropped = scores.join(kept.select("uid"), on="uid", how="anti")
    assert scores.join(kept.select("uid"), on="uid")["v"].min() >= dropped["v"].max()
    drops = Ledger(paths.catalog.ledger_dir).read("final_subset")
    assert set(drops["uid"]) == set(dropped["uid"])
    assert (drops["reason"] == "dvn_value_at_or_below_tau").all()
    # the export a user trains on: WebDataset shards and an open_clip CSV with one row per kept sample
    csv = (paths.root / "exports" / "tads" / "subset.csv").read_text().strip().splitlines()
    assert len(csv) == kept.height + 1


def test_the_dvn_started_from_the_alignment_row_prefers_clean_pairs_over_misaligned_ones(built, tmp_path):
    """On this 400-sample fixture the target CLIP that chooses θ₀'s row (prior "auto") learns next to nothing (21
    caption items, J 0.05-0.24), so which row wins there is chance; this test fixes the row that holds the pairs'
    alignment (Q+R+D+A, in a copy of the home, no target) and checks that FDO keeps what θ₀ knows. Measured: mean v
    0.31 for clean pairs against 0.23 for misaligned ones (2-core machine); from the Q+R+D row the fixture's target
    chose once lf_vague_caption cut at 2σ, 0.32 against 0.34 — q_φ learns misalignment only at the 10k scale."""
    paths, runs, truth = built
    assert runs["select"].success
    home = tmp_path / "home"
    shutil.copytree(paths.home, home, ignore=shutil.ignore_patterns("trained_clip", "locks"))
    config = {**DVN["ops"]["trained_dvn"]["config"], "prior": "q_r_d_a", "task_alignment": "none"}
    res = materialize([*UPSTREAM, trained_dvn], selection=[trained_dvn.key], resources=resources_for(home, paths.pool, paths.tasks),
                      run_config={"ops": {"trained_dvn": {"config": config}}})
    assert res.success
    joined = pl.read_parquet(Catalog(home).trained_dvn.path).join(truth, on="uid")
    assert joined.filter(pl.col("kind") == "clean")["v"].mean() > joined.filter(pl.col("kind") == "misaligned")["v"].mean()


def test_every_materialization_reports_counts_time_and_peak_memory_under_the_same_names(built):
    # peak memory: @one_writer / @one_writer_per_partition measure every asset body (core.memory.PeakRss), a
    # partitioned asset per partition
    _, runs, _ = built
    seen = set()
    for run in runs.values():
        for event in run.get_asset_materialization_events():
            meta = event.materialization.metadata
            name = event.asset_key.to_user_string()
            seen.add(name)
            assert {"n_in", "n_out", "seconds"} <= set(meta), (name, sorted(meta))
            assert meta["n_out"].value <= meta["n_in"].value or name == "benchmark_scores", name
            assert meta["peak_rss_measured"].value in ("exact", "sampled"), name
            assert meta["peak_rss_mib"].value >= meta["rss_before_mib"].value > 10, name  # a Python process with torch
    import definitions

    every = {k.to_user_string() for k in definitions.defs.resolve_asset_graph().get_all_asset_keys()}
    assert seen == every - {"frozen_features", "operator_features"}  # those two: tests/assets/test_scale_out.py

