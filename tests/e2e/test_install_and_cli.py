"""The installed project as a newcomer meets it: torch on CPU, open_clip, definitions, the CLIs."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_torch_is_the_pinned_cpu_build_and_open_clip_runs_on_it():
    import open_clip
    import torch
    from PIL import Image
    from torchvision import transforms

    assert torch.__version__.startswith("2.13.0")
    t = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    assert t(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    model, _, preprocess = open_clip.create_model_and_transforms("RN50", pretrained=None)
    model.eval()
    with torch.no_grad():
        image = model.encode_image(preprocess(Image.new("RGB", (64, 48))).unsqueeze(0))
        text = model.encode_text(open_clip.get_tokenizer("RN50")(["a red square"]))
    assert image.shape == text.shape == (1, 1024)
    assert torch.isfinite(image).all()


def test_definitions_load_with_every_asset_and_check():
    import definitions

    graph = definitions.defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} >= {
        "raw_pool", "clip_encoder", "pool_embeddings", "deduped_pool", "feature_table", "weak_labels", "quality_scores",
        "task_set", "relevance_vectors", "cluster_diversity", "baseline_subsets", "trained_clip", "benchmark_scores"}
    checks = {k.name for k in graph.asset_check_keys}
    assert {"raw_pool_ledger_complete", "raw_pool_rows_valid", "pool_embeddings_normalised",
            "deduped_pool_ledger_complete", "feature_table_valid", "weak_labels_valid", "quality_scores_in_range",
            "baseline_subsets_ledger_complete"} <= checks


def test_dagster_cli_materializes_raw_pool_and_tads_explains_a_drop(tmp_path, demo_dir, demo_spec):
    env = {**os.environ, "TADS_HOME": str(tmp_path / "home"), "TADS_POOL": demo_spec, "DAGSTER_HOME": str(tmp_path / "dh")}
    (tmp_path / "dh").mkdir()
    proc = subprocess.run([str(BIN / "dagster"), "asset", "materialize", "-m", "definitions", "--select", "raw_pool"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "home" / "parquet" / "raw_pool" / "_manifest.json").exists()

    truth = pl.read_parquet(demo_dir / "truth.parquet")
    broken = truth.filter(pl.col("kind") == "empty_caption")["uid"][0]
    out = subprocess.run([str(BIN / "tads"), "explain", broken], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "empty_caption" in out.stdout and "raw_pool" in out.stdout
    kept = truth.filter(pl.col("kind") == "clean")["uid"][0]
    out = subprocess.run([str(BIN / "tads"), "explain", kept], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "present in: raw_pool" in out.stdout
    out = subprocess.run([str(BIN / "tads"), "explain", "no-such-uid"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "never seen" in out.stdout
    out = subprocess.run([str(BIN / "tads"), "ledger"], env=env, capture_output=True, text=True, timeout=120)
    assert "empty_caption" in out.stdout


def test_tads_demo_pool_command(tmp_path):
    out = subprocess.run([str(BIN / "tads"), "demo-pool", "--out", str(tmp_path / "d"), "--n", "50", "--seed", "2",
                          "--shard-size", "25", "--rate", "misaligned=0.2"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "misaligned" in out.stdout and "10" in out.stdout
    assert sorted(p.name for p in (tmp_path / "d" / "pool").glob("*.tar")) == ["00000.tar", "00001.tar"]


def test_workspace_yaml_loads_the_code_location_as_dagster_dev_does(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "TADS_HOME": str(tmp_path / "home")}
    proc = subprocess.run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Validation successful" in proc.stderr + proc.stdout


def test_the_ui_binds_to_localhost_only_by_default():
    """`make ui` serves Dagster on 127.0.0.1 (README says how to expose it deliberately); nothing binds 0.0.0.0."""
    proc = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, timeout=60)
    serve = [line for line in proc.stdout.splitlines() if "dagster dev" in line]
    assert serve and all("-h 127.0.0.1" in line for line in serve), proc.stdout
    for name in ("Makefile", "workspace.yaml", "scripts/setup.sh", "definitions.py"):
        assert "0.0.0.0" not in (REPO / name).read_text(), name
    assert "-h 0.0.0.0" in (REPO / "README.md").read_text()  # the deliberate way, documented
