"""Small vector helpers shared by every layer: L2 normalisation, the joint image-text vector, k-means labels."""

from __future__ import annotations

import numpy as np

KMEANS_FIT_ROWS = 100_000  # K-Means is fitted on at most this many rows, then assigns every row


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def joint_vectors(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """[z_I; z_T]/√2: the joint embedding of a pair (unit norm when z_I and z_T are)."""
    return np.hstack([np.asarray(image, np.float32), np.asarray(text, np.float32)]) / np.sqrt(2.0)


def kmeans_clusters(joint: np.ndarray, n_clusters: int, seed: int = 0, batch_size: int = 4096,
                    fit_rows: int = KMEANS_FIT_ROWS) -> np.ndarray:
    """MiniBatch K-Means over the joint vectors [z_I; z_T]; returns the cluster id of each row.
    The centroids are fitted on a random sample of at most `fit_rows` rows, then every row is assigned,
    so the cost grows linearly with the pool."""
    from sklearn.cluster import MiniBatchKMeans

    joint = np.asarray(joint, np.float32)
    n_clusters = max(1, min(int(n_clusters), len(joint)))
    km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=batch_size, n_init=1,
                         max_iter=50, max_no_improvement=5, reassignment_ratio=0.0)
    if len(joint) > fit_rows:
        sample = np.random.default_rng(seed).choice(len(joint), fit_rows, replace=False)
        km.fit(joint[sample])
        return np.concatenate([km.predict(joint[i : i + 65536]) for i in range(0, len(joint), 65536)]).astype(np.int64)
    return km.fit_predict(joint).astype(np.int64)
