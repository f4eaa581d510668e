"""Settings shared by more than one stage, defined once. Everything else lives beside the code that uses it, as
a parameter dataclass (`DedupParams`, `QualityParams`, ...) from which the Dagster Config classes are derived."""

# The data budget: the share of the deduplicated pool a selection keeps. TADS's draws during Algorithm 1 (FDO's
# rate), the DVN's initial value, final_subset's cap, the size-matched baselines and the benchmarks all read it
# (resource `budget`, TADS_BUDGET_FRACTION).
BUDGET_FRACTION = 0.4

# The decisions ledger's vocabulary: every row records one of these for a sample of a stage.
DROP = "drop"
KEEP = "keep"
