"""Eq. 10-12 on tiny inputs whose answer is known by hand."""

import numpy as np
import pytest

from tads_assets.core.method.diversity import cluster_sizes, diversity_factor
from tads_assets.core.method.relevance import relevance_scores, relevance_vector, support_texts


def test_support_texts_fill_every_template_with_every_class_and_sample_retrieval_captions():
    assert support_texts("classification", ["a {}.", "the {}"], ["cat", "dog"]) == ["a cat.", "the cat", "a dog.", "the dog"]
    caps = [f"caption {i}" for i in range(10)]
    a = support_texts("retrieval", ["{}"], captions=caps, max_captions=4, seed=1)
    assert len(a) == 4 and set(a) <= set(caps) and a == support_texts("retrieval", ["{}"], captions=caps, max_captions=4, seed=1)
    with pytest.raises(ValueError, match="validation set"):
        support_texts("retrieval", ["{}"], captions=[])


def test_relevance_is_the_mean_cosine_to_the_prototypes():
    e = np.eye(3, dtype=np.float32)
    image = np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    text = np.array([[1, 0, 0], [0, 0, 1]], np.float32)
    protos = [np.stack([e[0], e[1]]), np.stack([e[2]])]  # task 0: two prototypes, task 1: one
    r = relevance_scores(image, text, protos, modality="image")
    # mean of cos to e0 and e1: sample 0 -> (1 + 0) / 2, sample 1 -> (0 + 1) / 2; task 1: 0, 0
    assert np.allclose(r, [[0.5, 0.0], [0.5, 0.0]])
    both = relevance_scores(image, text, protos)
    assert np.allclose(both, [[0.5, 0.0], [0.25, 0.5]])
    # brute force: the closed form equals averaging the individual cosines
    rng = np.random.default_rng(0)
    x, p = rng.standard_normal((5, 8)), rng.standard_normal((7, 8))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    brute = (unit(x) @ unit(p).T).mean(axis=1)
    assert np.allclose(relevance_scores(x, x, [p], modality="text")[:, 0], brute, atol=1e-5)


def test_relevance_vector_is_unit_length_and_safe_at_zero():
    h = relevance_vector(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert np.allclose(h[0], [0.6, 0.8], atol=1e-6) and np.allclose(h[1], 0.0)


def test_diversity_factor_follows_eq_12():
    labels = np.array([0, 0, 0, 0, 1, 2, 2])
    assert cluster_sizes(labels).tolist() == [4, 4, 4, 4, 1, 2, 2]
    assert np.allclose(diversity_factor(labels, 0.0), 1.0)
    d = diversity_factor(labels, 1.0)
    assert np.allclose(d, [0.25] * 4 + [1.0, 0.5, 0.5], atol=1e-5)
    d2 = diversity_factor(labels, 2.0)
    assert d2[4] / d2[0] == pytest.approx(16.0, rel=1e-4)  # a 4× smaller cluster, δ = 2 → 16× the weight
    with pytest.raises(ValueError):
        diversity_factor(labels, -1.0)


def test_nearest_relevance_takes_the_closest_class_prototype_and_mean_is_eq_10():
    from tads_assets.core.method.relevance import task_prototypes

    e = np.eye(4, dtype=np.float32)
    # two classes x two templates: class 0's prompts share e0 (the template words) with e1, class 1's with e2
    support = np.stack([0.6 * e[0] + e[1], 0.6 * e[0] + e[1] * 0.5, 0.6 * e[0] + e[2], 0.6 * e[0] + e[2] * 0.5])
    protos = task_prototypes("classification", support, n_classes=2)
    assert protos.shape == (2, 4) and np.allclose(np.linalg.norm(protos, axis=1), 1.0)
    assert np.array_equal(task_prototypes("retrieval", support), support / np.linalg.norm(support, axis=1, keepdims=True))
    assert task_prototypes("classification", support, 2, "mean").shape == (4, 4)
    with pytest.raises(ValueError, match="do not split"):
        task_prototypes("classification", support, n_classes=3)
    specific = np.array([[0, 1, 0, 0]], np.float32)  # says what class 0 is
    generic = np.array([[1, 0, 0, 0]], np.float32)  # only the template words ("a photo")
    x = np.concatenate([specific, generic])
    nearest = relevance_scores(x, x, [protos], aggregate="nearest")[:, 0]
    mean = relevance_scores(x, x, [task_prototypes("classification", support, 2, "mean")], aggregate="mean")[:, 0]
    assert nearest[0] > nearest[1]  # the specific caption is the more relevant one ...
    assert mean[0] < mean[1]  # ... where eq. 10's mean over prompts prefers the generic one
    # brute force, both modalities, across row blocks
    rng = np.random.default_rng(1)
    img, txt, p = rng.standard_normal((9, 5)), rng.standard_normal((9, 5)), rng.standard_normal((3, 5))
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    brute = (0.5 * (unit(img) @ unit(p).T + unit(txt) @ unit(p).T)).max(axis=1)
    assert np.allclose(relevance_scores(img, txt, [p], aggregate="nearest", chunk=4)[:, 0], brute, atol=1e-5)
    with pytest.raises(ValueError, match="aggregate"):
        relevance_scores(img, txt, [p], aggregate="median")
