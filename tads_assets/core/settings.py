"""Settings shared by more than one stage, defined once. Everything else lives beside the code that uses it, as
a parameter dataclass (`DedupParams`, `QualityParams`, ...) from which the Dagster Config classes are derived."""

# The data budget: the share of the readable raw pool a selection keeps (the paper keeps 36 % of the original data),
# unless an absolute count is set (resource `budget`: TADS_BUDGET_FRACTION, TADS_BUDGET_SIZE). TADS's draws during
# Algorithm 1 (FDO's rate over the deduplicated pool), the DVN's initial value, final_subset's cap, the size-matched
# baselines and the benchmarks all derive their sizes from it (`selection.budget_size`).
BUDGET_FRACTION = 0.36

# The decisions ledger's vocabulary: every row records one of these for a sample of a stage.
DROP = "drop"
KEEP = "keep"
