"""The head proxy of Algorithm 1 on synthetic frozen features whose right answer is known."""

import time

import numpy as np
import pytest

from tads_assets.core.method.proxy import HeadProxy, ProxyParams, ValTask


def _world(seed=0, n=1200, n_classes=5, dim=32):
    """Images and captions are noisy views of a class vector; the last third of the pool is misaligned
    (captions of another class)."""
    rng = np.random.default_rng(seed)
    classes = rng.standard_normal((n_classes, dim))
    img_proj, txt_proj = rng.standard_normal((dim, 48)), rng.standard_normal((dim, 24))
    labels = rng.integers(0, n_classes, n)
    cap_labels = labels.copy()
    bad = np.arange(n) >= 2 * n // 3
    cap_labels[bad] = (labels[bad] + rng.integers(1, n_classes, bad.sum())) % n_classes
    image = (classes[labels] + 0.5 * rng.standard_normal((n, dim))) @ img_proj
    text = (classes[cap_labels] + 0.5 * rng.standard_normal((n, dim))) @ txt_proj
    val_labels = rng.integers(0, n_classes, 300)
    val = ValTask("shapes", "classification", 1.0, (classes[val_labels] + 0.5 * rng.standard_normal((300, dim))) @ img_proj,
                  labels=val_labels, prompt_feats=(classes + 0.1 * rng.standard_normal((n_classes, dim))) @ txt_proj,
                  n_classes=n_classes)
    return image, text, val, bad


def test_a_clean_subset_earns_a_higher_reward_than_a_misaligned_one():
    image, text, val, bad = _world()
    proxy = HeadProxy(image, text, [val], ProxyParams(steps=60, batch_size=128))
    clean = np.zeros(len(image), bool)
    clean[:400] = True
    misaligned = bad.copy()
    j_clean, m_clean = proxy.reward(clean)
    j_bad, _ = proxy.reward(misaligned)
    assert j_clean > 0.8 and j_bad < 0.5 * j_clean
    assert m_clean["shapes"] == j_clean  # weight 1, one task


def test_the_reward_is_a_function_of_the_subset_and_an_adaptation_is_fast():
    image, text, val, _ = _world(1)
    proxy = HeadProxy(image, text, [val], ProxyParams())
    mask = np.random.default_rng(0).random(len(image)) < 0.4
    t0 = time.perf_counter()
    a, _ = proxy.reward(mask)
    seconds = time.perf_counter() - t0
    b, _ = proxy.reward(mask.copy())
    assert a == b and proxy.n_adaptations == 2
    # "one proxy adaptation takes well under a second on CPU" (measured at demo scale by the DVN's metadata);
    # here with slack for a shared CI machine
    assert seconds < 2.0, seconds
    with pytest.raises(ValueError, match="at least 2"):
        proxy.reward(np.zeros(len(image), bool))


def test_adding_a_few_samples_moves_the_reward_far_less_than_a_new_subset_does():
    # the batches are common random numbers: a small change of S changes a few batch slots, not all
    image, text, val, _ = _world(2, n=2000)
    proxy = HeadProxy(image, text, [val], ProxyParams(steps=40, batch_size=128))
    rng = np.random.default_rng(0)
    base = rng.random(len(image)) < 0.3
    grown = base.copy()
    grown[np.flatnonzero(~base)[:10]] = True
    other = rng.random(len(image)) < 0.3
    j, j_grown, j_other = proxy.reward(base)[0], proxy.reward(grown)[0], proxy.reward(other)[0]
    assert abs(j_grown - j) <= abs(j_other - j) + 1e-9


def test_ensemble_averages_seeds_and_keeps_equal_subsets_equal():
    from tads_assets.core.method.proxy import ProxyEnsemble

    image, text, val, _ = _world(3)
    params = ProxyParams(steps=3, batch_size=64)  # a short adaptation, so that the seeds leave a trace
    ens = ProxyEnsemble(image, text, [val], params, repeats=3)
    mask = np.random.default_rng(0).random(len(image)) < 0.3
    a, metrics = ens.reward(mask)
    assert a == ens.reward(mask.copy())[0] and ens.n_adaptations == 6
    singles = [HeadProxy(image, text, [val], ProxyParams(steps=3, batch_size=64, seed=s)).reward(mask)[0]
               for s in range(3)]
    assert a == pytest.approx(np.mean(singles)) and metrics["shapes"] == pytest.approx(a)
    assert len(set(singles)) > 1  # the seeds differ: that is the noise the average removes
    with pytest.raises(ValueError):
        ProxyEnsemble(image, text, [val], repeats=0)


def test_full_mode_clip_proxy_fine_tunes_a_whole_clip_and_scores_the_validation_sets(demo_dir):
    import torch

    from tads_assets.core.harness import clip_train
    from tads_assets.core.io import eval_sets
    from tads_assets.core.harness.clip_proxy import ClipProxy
    from tads_assets.core.io.tasks import load_task_set

    tasks = load_task_set(demo_dir / "tasks.yaml")
    val_sets = eval_sets.load_eval_sets(tasks, "validation")
    # a tiny pool: the fashion validation images themselves with their class names as captions
    fashion = val_sets["fashion"]
    captions = [f"a photo of a {tasks[0].classes[label]}." for label in fashion.labels]

    def make_model():
        torch.manual_seed(0)
        return clip_train.create_model()

    _, preprocess, tokenizer = make_model()
    images = torch.stack([preprocess(im.convert("RGB")) for im in fashion.images])
    proxy = ClipProxy(make_model, images, tokenizer(captions), tasks, val_sets, budget_samples_seen=64, batch_size=16)
    mask = np.arange(len(images)) % 2 == 0
    a, metrics = proxy.reward(mask)
    assert a == proxy.reward(mask.copy())[0] and proxy.n_adaptations == 2  # same start, same subset, same J
    assert set(metrics) == {"fashion", "digits", "captions"} and all(0 <= m <= 1 for m in metrics.values())
    assert a == pytest.approx(sum(t.weight * metrics[t.name] for t in tasks))
    with pytest.raises(ValueError, match="at least 2"):
        proxy.reward(np.zeros(len(images), bool))


def test_alignment_factors_zero_a_task_the_target_cannot_learn_and_keep_one_it_learns_as_well():
    from tads_assets.core.method.proxy import alignment_factors

    chance = {"fashion": 0.1, "digits": 0.1, "captions": 0.005}
    proxy = {"fashion": 0.5, "digits": 0.37, "captions": 0.27}
    target = {"fashion": 0.24, "digits": 0.095, "captions": 0.40}
    a = alignment_factors(target, proxy, chance)
    assert a["digits"] == 0.0  # target at (or below) chance: the task cannot reward a selection
    assert a["fashion"] == pytest.approx(0.14 / 0.4)  # the share of the proxy's gain over chance the target reaches
    assert a["captions"] == 1.0  # capped: the target does better than the proxy
    assert alignment_factors({"t": 0.3}, {"t": 0.1}, {"t": 0.1}) == {"t": 0.0}  # proxy at chance: no signal


def test_reweighting_the_tasks_changes_the_reward_and_evaluate_matches_chance_levels():
    from tads_assets.core.method.proxy import ProxyEnsemble, chance_levels

    image, text, val, bad = _world()
    other = ValTask("echo", "retrieval", 1.0, val.image_feats[:50], caption_feats=val.image_feats[:50] @ np.zeros((48, 24)))
    ens = ProxyEnsemble(image, text, [val, other], ProxyParams(steps=30))
    assert chance_levels(ens.val) == {"shapes": pytest.approx(0.2), "echo": pytest.approx(1 / 50)}
    clean = ~bad
    j_both, metrics = ens.reward(clean)
    ens.reweight({"shapes": 1.0, "echo": 0.0})
    j_shapes, metrics_again = ens.reward(clean)
    assert metrics_again == metrics  # the same adaptation: only the weights of eq. 15 moved
    assert j_shapes == pytest.approx(metrics["shapes"]) and j_both == pytest.approx(metrics["shapes"] + metrics["echo"])


def _sequential_reference(proxy: HeadProxy, mask: np.ndarray):
    """The adaptation written out for one mask, as eq. 14 reads (one heads copy, one Adam, info_nce)."""
    import torch

    from tads_assets.core.method.encoder import HeadsConfig, ProjectionHeads, info_nce

    p = proxy.params
    selected = torch.as_tensor(mask)
    torch.manual_seed(p.seed)
    heads = ProjectionHeads(HeadsConfig(p.embed_dim, p.hidden_dim), proxy.xi.shape[1], proxy.xt.shape[1])
    opt = torch.optim.Adam(heads.parameters(), lr=p.lr)
    bs = min(p.batch_size, int(selected.sum()))
    for step in range(p.steps):
        idx = torch.topk(proxy.keys[step].masked_fill(~selected, 2.0), bs, largest=False).indices
        loss = info_nce(heads.embed_images(proxy.xi[idx]), heads.embed_texts(proxy.xt[idx]), heads.logit_scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return heads.eval()


@pytest.mark.parametrize("hidden_dim", [0, 32])
def test_batched_adaptations_follow_each_masks_own_trajectory(hidden_dim):
    # all masks of a meta-iteration are adapted as one stacked computation; each member must end where its mask
    # alone would (members with a smaller subset than the batch size are trained in their own group)
    image, text, val, _ = _world(3, n=600)
    proxy = HeadProxy(image, text, [val], ProxyParams(steps=12, batch_size=64, hidden_dim=hidden_dim, embed_dim=16))
    rng = np.random.default_rng(1)
    masks = [rng.random(len(image)) < r for r in (0.3, 0.5, 0.3)] + [np.arange(len(image)) < 40]  # the last: |S| < 64
    batched = proxy.adapt_many(masks)
    assert proxy.n_adaptations == len(masks)
    for mask, heads in zip(masks, batched):
        ref = _sequential_reference(proxy, mask)
        for (name, a), (_, b) in zip(heads.state_dict().items(), ref.state_dict().items()):
            np.testing.assert_allclose(a.numpy(), b.detach().numpy(), rtol=1e-4, atol=2e-5, err_msg=name)
    rewards = proxy.reward_many(masks)
    assert [j for j, _ in rewards] == pytest.approx([proxy.reward(m)[0] for m in masks], abs=1e-6)
    assert len({round(j, 6) for j, _ in rewards}) > 1  # different subsets, different rewards


def test_feature_reduction_keeps_the_pools_main_directions_and_the_reduced_proxy_ranks_subsets_alike():
    from tads_assets.core.method.proxy import FeatureReduction, reduced_features

    image, text, val, bad = _world()
    red = FeatureReduction.fit(image, 8)
    assert red.basis.shape == (48, 8) and np.allclose(red.basis.T @ red.basis, np.eye(8), atol=1e-5)
    z = red(image)
    assert z.shape == (len(image), 8)
    variances = z.var(axis=0)
    assert (np.diff(variances) <= 1e-6).all()  # coordinates by decreasing variance
    assert 0.5 < red.explained <= 1.0  # 32 latent dimensions seen through 48: the top 8 carry most of it
    ri, rt, rval, kept = reduced_features(image, text, [val], 16)
    assert ri.shape[1] == 16 and rt.shape[1] == 16 and rval[0].image_feats.shape[1] == 16
    assert rval[0].prompt_feats.shape == (val.n_classes, 16) and set(kept) == {"image", "text"}
    same = reduced_features(image, text, [val], 64)  # both towers have fewer features than that: unchanged
    assert same[0] is image and same[3] == {}
    full = HeadProxy(image, text, [val], ProxyParams(steps=40, batch_size=128))
    small = HeadProxy(image, text, [val], ProxyParams(steps=40, batch_size=128, feature_dims=16))
    clean, broken = ~bad, bad | (np.arange(len(bad)) < 100)
    for proxy in (full, small):  # the reduced proxy still tells a clean subset from a misaligned one
        assert proxy.reward(clean)[0] > proxy.reward(broken)[0] + 0.1


def test_stacked_info_nce_has_the_value_and_gradient_of_clips_loss_per_member():
    import torch

    from tads_assets.core.method.encoder import info_nce
    from tads_assets.core.method.proxy import _StackedInfoNCE

    gen = torch.Generator().manual_seed(0)
    zi = torch.nn.functional.normalize(torch.randn(3, 6, 4, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    zt = torch.nn.functional.normalize(torch.randn(3, 6, 4, generator=gen, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor([1.0, 5.0, 40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_StackedInfoNCE.apply, (zi, zt, scale))  # the written-out backward is ∂loss
    expected = sum(info_nce(zi[m], zt[m], scale[m].log()) for m in range(3))  # info_nce takes log(scale)
    assert float(_StackedInfoNCE.apply(zi, zt, scale).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


@pytest.mark.parametrize("hidden_dim", [0, 32])
def test_stacked_evaluation_scores_each_member_as_its_own_heads_do(hidden_dim):
    image, text, val, _ = _world(3, n=600)
    retrieval = ValTask("pairs", "retrieval", 1.0, val.image_feats, caption_feats=text[:len(val.image_feats)])
    proxy = HeadProxy(image, text, [val, retrieval], ProxyParams(steps=8, batch_size=64, hidden_dim=hidden_dim,
                                                                 embed_dim=16))
    rng = np.random.default_rng(2)
    masks = [rng.random(len(image)) < r for r in (0.2, 0.5, 0.8)]
    stacked = [m for _, m in proxy.reward_many(masks)]
    one_by_one = [proxy.evaluate(h) for h in proxy.adapt_many(masks)]
    assert stacked == [pytest.approx(m, abs=1e-9) for m in one_by_one]
    assert len({m["pairs"] for m in stacked}) > 1 or len({m[val.name] for m in stacked}) > 1


def test_a_task_at_chance_is_told_apart_from_one_the_proxy_learned():
    from tads_assets.core.method.proxy import at_chance

    # garment_category on the outside catalogue pool: 0.190 top-1 with 5 classes over 200 validation items
    assert at_chance(0.190, 0.2, 200) and at_chance(0.24, 0.2, 200)  # 0.24 is within 2 standard errors (0.057)
    assert not at_chance(0.30, 0.2, 200) and not at_chance(0.37, 0.1, 1000)


def test_validation_tasks_leave_out_the_classes_the_benchmark_leaves_out(demo_dir):
    """Algorithm 1 judges rows, task alignment and rewards on the metric Table 1 reports: a class the benchmark
    leaves out (no word for it in the pool) loses its items and prompts, labels follow the classes kept, chance
    follows their count; with fewer than two classes kept the task is scored over all of them."""
    from tads_assets.core.io.tasks import load_task_set
    from tads_assets.core.method.proxy import chance_levels, validation_tasks

    tasks = load_task_set(demo_dir / "tasks.yaml")
    fashion = next(t for t in tasks if t.name == "fashion")
    one_hot = lambda n: (lambda xs: np.eye(n, dtype=np.float32)[np.arange(len(xs)) % n])  # noqa: E731
    every = validation_tasks(tasks, one_hot(7), one_hot(5), max_items=10_000)
    left_out = list(fashion.classes[:7])
    kept = validation_tasks(tasks, one_hot(7), one_hot(5), max_items=10_000, unnamed={"fashion": left_out})
    f_every, f_kept = (next(v for v in val if v.name == "fashion") for val in (every, kept))
    assert f_every.n_classes == len(fashion.classes) and f_kept.n_classes == len(fashion.classes) - 7
    assert set(f_kept.labels.tolist()) == set(range(f_kept.n_classes))  # remapped onto the classes kept
    gone = int(np.isin(f_every.labels, np.arange(7)).sum())
    assert 0 < gone and len(f_kept.labels) == len(f_every.labels) - gone
    assert len(f_kept.prompt_feats) == f_kept.n_classes * len(fashion.templates)
    assert chance_levels(kept)["fashion"] == pytest.approx(1 / f_kept.n_classes)
    others = [(a.name, len(a.image_feats)) for a in every if a.name != "fashion"]
    assert [(a.name, len(a.image_feats)) for a in kept if a.name != "fashion"] == others  # other tasks untouched
    lone = validation_tasks(tasks, one_hot(7), one_hot(5), max_items=10_000,
                            unnamed={"fashion": list(fashion.classes[1:])})
    assert next(v for v in lone if v.name == "fashion").n_classes == len(fashion.classes)
