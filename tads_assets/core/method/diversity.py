"""§3.2.3 distributional diversity: a sample's weight falls with the size of its semantic cluster."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cluster_sizes(labels: np.ndarray) -> np.ndarray:
    """|C_x| for every sample x."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return counts[inverse]


@dataclass
class DiversityParams:
    """Eq. 12 settings: δ (density sensitivity; 0 switches diversity off) and the number of clusters."""

    delta: float = 0.5
    n_clusters: int = 100
    seed: int = 0


def diversity_factor(labels: np.ndarray, delta: float, eps: float = 1e-6) -> np.ndarray:
    """Eq. 12: d(x) = (1 / (|C_x| + ε))^δ. δ = 0 gives 1 everywhere; larger δ flattens the distribution
    harder (a sample of a 10× smaller cluster gets 10^δ × the weight)."""
    if delta < 0:
        raise ValueError(f"delta must be ≥ 0, got {delta}")
    return np.power(1.0 / (cluster_sizes(labels).astype(np.float64) + eps), delta).astype(np.float32)
