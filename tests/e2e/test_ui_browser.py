"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1, Debian's Chromium driven headless by Playwright
(no browser download). Every asset of DESIGN.md is on the asset graph; the sensor and schedule are listed; one asset
is materialized from its page.
Screenshots go to $TADS_TEST_OUTPUT/ui (default: test-output/ui in the repository)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("TADS_CHROMIUM", "/usr/bin/chromium"))
OUTPUT = Path(os.environ.get("TADS_TEST_OUTPUT", REPO / "test-output")) / "ui"
# Chromium on a machine with a closed network: no background connections, no sandbox (CI runs as root)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# DESIGN.md "Asset graph"
DESIGN_ASSETS = ["raw_pool", "clip_encoder", "pool_embeddings", "deduped_pool", "feature_table", "weak_labels",
                 "quality_scores", "task_set", "relevance_vectors", "cluster_diversity", "trained_dvn", "final_subset",
                 "baseline_subsets", "trained_clip", "benchmark_scores"]
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 180

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: the UI test needs Debian's chromium "
                       "(scripts/setup.sh installs it as root or with sudo; TADS_CHROMIUM points elsewhere)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e .[dev]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/server_info", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"dagster dev did not serve {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def dagster_ui(tmp_path, demo_dir, demo_spec):
    """`dagster dev` for the code location, on 127.0.0.1 and a free port, with its own DAGSTER_HOME and TADS_HOME."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "TADS_HOME": str(tmp_path / "home"),
           "TADS_POOL": demo_spec, "TADS_TASKS": str(demo_dir / "tasks.yaml"), "RUST_LOG": "error"}
    url = f"http://127.0.0.1:{_free_port()}"
    log = tmp_path / "dagster_dev.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1],
                                 "-m", "definitions"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_until_serving(url, proc, log)
        yield url, tmp_path / "home", log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _dismiss_welcome(page) -> None:
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()


def _expand_all_groups(page) -> None:
    """The graph opens with its groups collapsed; its context menu (right click on the canvas) expands them."""
    menu_item = page.get_by_role("menuitem", name="Expand all groups")
    for _ in range(10):
        page.wait_for_timeout(1500)
        _dismiss_welcome(page)
        page.mouse.click(1800, 1300, button="right")
        if menu_item.count():
            menu_item.click()
            return
        page.keyboard.press("Escape")
    page.screenshot(path=str(OUTPUT / "asset_graph_no_menu.png"))
    pytest.fail("the asset graph's context menu never offered 'Expand all groups' (screenshot asset_graph_no_menu.png)")


def test_ui_shows_every_asset_and_materializes_one(dagster_ui):
    url, home, log = dagster_ui
    if OUTPUT.exists():
        shutil.rmtree(OUTPUT)
    OUTPUT.mkdir(parents=True)
    expect = sync_api.expect
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 2400, "height": 1500})
            page.goto(f"{url}/asset-groups", wait_until="networkidle", timeout=120_000)
            expect(page.get_by_text("Global asset lineage")).to_be_visible(timeout=60_000)
            _expand_all_groups(page)
            for name in DESIGN_ASSETS:
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(OUTPUT / "asset_graph.png"))

            # the sensor and the schedule are on by default and listed under Automation
            page.goto(f"{url}/automation", wait_until="networkidle", timeout=120_000)
            _dismiss_welcome(page)
            for name in ("task_file_sensor", "weekly_full_refresh"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=30_000)
            page.screenshot(path=str(OUTPUT / "automation.png"))

            page.goto(f"{url}/assets/task_set", wait_until="networkidle", timeout=120_000)
            _dismiss_welcome(page)
            expect(page.get_by_text("Never materialized")).to_be_visible(timeout=30_000)
            page.locator("button").filter(has_text=re.compile(r"^\s*Materialize\s*$")).first.click()
            expect(page.get_by_text("Launched run")).to_be_visible(timeout=60_000)
            produced = home / "parquet" / "task_set" / "task_set.json"
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not produced.exists() and time.monotonic() < deadline:
                time.sleep(1)
            assert produced.exists(), f"the run launched from the UI wrote nothing:\n{log.read_text()[-3000:]}"
            # the asset page shows the new materialization and its metadata
            for _ in range(30):
                page.reload(wait_until="networkidle")
                if page.get_by_text("n_tasks").count():
                    break
                page.wait_for_timeout(2000)
            expect(page.get_by_text("n_tasks").first).to_be_visible(timeout=10_000)
            expect(page.get_by_text("Never materialized")).to_have_count(0)
            page.screenshot(path=str(OUTPUT / "task_set_materialized.png"))
        finally:
            browser.close()
    assert (OUTPUT / "asset_graph.png").stat().st_size > 10_000
    assert "Serving dagster-webserver on http://127.0.0.1:" in log.read_text()
