# The README's two commands: `make demo` and `make test`. Both set the machine up first.
VENV ?= .venv
export TADS_HOME ?= $(CURDIR)/.tads
# Run history and materialization metadata persist here, so `make ui` shows what `make demo` did.
export DAGSTER_HOME ?= $(TADS_HOME)/dagster

.PHONY: setup dagster-home demo test ui clean

setup:
	VENV=$(VENV) bash scripts/setup.sh

# A persistent Dagster instance whose run logs also carry TADS's own progress messages.
dagster-home:
	@mkdir -p $(DAGSTER_HOME)
	@test -f $(DAGSTER_HOME)/dagster.yaml || printf 'python_logs:\n  managed_python_loggers:\n    - tads_assets\n  python_log_level: INFO\ntelemetry:\n  enabled: false\n' > $(DAGSTER_HOME)/dagster.yaml

# Generate the demo pool and materialize every asset (with its checks) into $(TADS_HOME), in one process (`tads run`):
# job tads_selection (the pool, quality, relevance and diversity stages, the DVN of Algorithm 1, TADS's final subset),
# job tads_baselines (every baseline's subset), job tads_methods (a CLIP trained on each method's subset, then the
# benchmark); each partitioned job is one run over all its partitions (tads_assets/automation.py). The per-part
# assets (frozen_features, operator_features) are for fanned-out backfills (docs/operations.md); without them,
# clip_encoder and feature_table compute every part.
demo: setup dagster-home
	$(VENV)/bin/tads run
	$(VENV)/bin/tads ledger
	@cat $(TADS_HOME)/reports/benchmark.md

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest -q --durations=15

# The Dagster UI on http://127.0.0.1:3000
ui: setup dagster-home
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000

clean:
	rm -rf $(TADS_HOME) .pytest_cache
