import numpy as np
import pytest

from tads_assets.core.method import dedup


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_s_init_prefers_resolution_and_longer_captions():
    s = dedup.s_init(np.array([10, 100, 100]), np.array([10, 100, 100]), np.array([5, 5, 50]), 1.0, 1.0)
    assert s[0] < s[1] < s[2]
    assert np.allclose(dedup.s_init(np.array([10, 100]), np.array([10, 100]), np.array([5, 50]), 0.0, 1.0), [0, 1])


def test_metadata_layer_collapses_hash_and_url_collisions_keeping_argmax_s_init():
    sha = np.array(["h1", "h1", "h2", "h3", "h4"], object)
    url = np.array(["u1", "u2", "u3", "u3", None], object)  # rows 2 and 3 share a url
    score = np.array([0.1, 0.9, 0.5, 0.7, 0.0])
    res = dedup.metadata_dedup(sha, url, score)
    assert res.removed.tolist() == [True, False, True, False, False]
    assert res.duplicate_of[0] == 1 and res.duplicate_of[2] == 3 and res.duplicate_of[4] == -1


def test_metadata_layer_follows_chains_of_collisions():
    # 0~1 by hash, 1~2 by url: one collision set of three
    res = dedup.metadata_dedup(np.array(["a", "a", "b"], object), np.array(["x", "y", "y"], object), np.array([0, 0, 1.0]))
    assert res.removed.tolist() == [True, True, False] and set(res.duplicate_of[:2]) == {2}


def test_semantic_layer_keeps_ceil_gamma_of_each_cluster_by_score():
    labels = np.array([0, 0, 0, 0, 1, 1, 2])
    score = np.array([0.1, 0.4, 0.3, 0.2, 0.5, 0.6, 0.0])
    res = dedup.semantic_dedup(labels, score, gamma=0.5)  # K = 2, 1, 1
    assert res.removed.tolist() == [True, False, False, True, True, False, False]
    assert res.duplicate_of[0] == 1 and res.duplicate_of[4] == 5
    assert not dedup.semantic_dedup(labels, score, gamma=1.0).removed.any()
    with pytest.raises(ValueError):
        dedup.semantic_dedup(labels, score, gamma=0.0)


def test_quality_layer_flags_structural_or_semantic_pairs_and_keeps_best_aligned():
    captions = ["a red sneaker, size 42", "a red sneaker, size 43", "blue dress", "azure gown", "green bag"]
    text = unit([[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0], [0, 0.999, 0.04], [0, 0, 1]])
    pairs = np.array([[0, 1], [2, 3], [3, 4]])
    align = np.array([0.2, 0.3, 0.5, 0.1, 0.9])
    res = dedup.quality_dedup(pairs, captions, text, align, tau_edit=0.1, tau_sem=0.99)
    # 0/1 differ by one character (structural), 2/3 are paraphrases (semantic), 3/4 are neither
    assert res.removed.tolist() == [True, False, False, True, False]
    assert res.duplicate_of[0] == 1 and res.duplicate_of[3] == 2
    assert res.extra["structural_pairs"] == 1 and res.extra["semantic_pairs"] == 1


def test_quality_layer_visual_test_catches_a_reposted_picture_only_when_switched_on():
    captions = ["a red sneaker, size 42", "Sale: crimson trainers for running", "a red sneaker, size 9"]
    text = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])  # captions unrelated by both text tests
    tiny = unit([[1, 0, 0], [0.99, 0.1, 0], [0.9, 0.43, 0]])  # 0/1 cos 0.995, 0/2 cos 0.90
    pairs = np.array([[0, 1], [0, 2]])
    align = np.array([0.5, 0.4, 0.3])
    off = dedup.quality_dedup(pairs, captions, text, align, tau_edit=0.0, tau_sem=1.01)
    assert not off.removed.any()  # the paper's text-only rule: nothing redundant
    on = dedup.quality_dedup(pairs, captions, text, align, tau_edit=0.0, tau_sem=1.01, tiny_vec=tiny, tau_vis=0.95)
    assert on.removed.tolist() == [False, True, False] and on.duplicate_of[1] == 0
    assert on.extra["visual_pairs"] == 1


def test_candidate_pairs_stay_within_a_cluster_and_are_unique():
    labels = np.array([0, 0, 1, 1])
    idx = np.array([[1, 2], [0, 3], [3, 0], [2, 1]])
    cos = np.ones((4, 2), np.float32)
    assert dedup.candidate_pairs(labels, idx, cos, 0.0).tolist() == [[0, 1], [2, 3]]


def test_lancedb_neighbours_match_brute_force():
    rng = np.random.default_rng(0)
    x = unit(rng.normal(size=(300, 16)))
    idx, cos = dedup.neighbours_lancedb(x, k=5)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    truth = np.argsort(-sims, axis=1)[:, :5]
    assert (idx == truth).mean() > 0.99
    assert np.allclose(cos[:, 0], sims[np.arange(300), truth[:, 0]], atol=1e-4)


def test_exact_neighbours_match_lancedb_and_brute_force():
    rng = np.random.default_rng(2)
    x = unit(rng.normal(size=(300, 16)))
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    truth = np.argsort(-sims, axis=1)[:, :5]
    # blocks of 7 rows: the self-exclusion must follow each block's offset
    idx, cos = dedup.neighbours_exact(3.0 * x, k=5, block_entries=7 * 300)  # unnormalised input: cosine all the same
    assert (idx == truth).all()
    assert np.allclose(cos, np.take_along_axis(sims, truth, axis=1), atol=1e-5)
    assert (idx != np.arange(300)[:, None]).all()
    lance_idx, _ = dedup.neighbours_lancedb(x, k=5)
    assert (lance_idx == idx).mean() > 0.99
    assert dedup.neighbours_exact(x[:3], k=5)[0].shape == (3, 2)  # at most n - 1 neighbours
    assert dedup.neighbours_exact(x[:1], k=5)[0].shape == (1, 0)


def test_neighbours_search_exactly_below_the_limit_and_through_lancedb_above(monkeypatch):
    calls = []
    monkeypatch.setattr(dedup, "neighbours_lancedb", lambda v, k: calls.append(len(v)) or dedup.neighbours_exact(v, k))
    x = unit(np.random.default_rng(3).normal(size=(50, 8)))
    dedup.neighbours(x, 3, exact_max_rows=50)
    assert calls == []
    dedup.neighbours(x, 3, exact_max_rows=49)
    assert calls == [50]


def test_deduplicate_removes_planted_duplicates_and_nothing_else():
    rng = np.random.default_rng(1)
    n = 400
    img = unit(rng.normal(size=(n, 32)))
    txt = unit(img + 0.3 * unit(rng.normal(size=(n, 32))))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz     "))
    captions = ["".join(rng.choice(letters, size=40)) for _ in range(n)]
    sha = np.array([f"h{i}" for i in range(n)], object)
    url = np.array([f"u{i}" for i in range(n)], object)
    # rows 400..409 exact copies of 0..9; rows 410..419 near copies of 20..29 (caption edited slightly)
    exact = list(range(10))
    near = list(range(20, 30))
    img = np.vstack([img, img[exact], unit(img[near] + 0.02 * rng.normal(size=(10, 32)))])
    txt = np.vstack([txt, txt[exact], unit(txt[near] + 0.02 * rng.normal(size=(10, 32)))])
    captions += [captions[i] for i in exact] + [captions[i] + "!" for i in near]
    sha = np.concatenate([sha, sha[exact], np.array([f"n{i}" for i in near], object)])
    url = np.concatenate([url, url[exact], np.array([f"m{i}" for i in near], object)])
    wh = np.full(len(captions), 64)
    out = dedup.deduplicate(sha, url, captions, wh, wh, img, txt, dedup.DedupParams(n_clusters=20))
    removed = np.flatnonzero(~out.kept)
    # every planted pair lost exactly one member, and no unrelated sample was touched
    for a, b in zip(exact + near, range(400, 420)):
        assert out.kept[a] != out.kept[b]
    assert (~out.kept).sum() == 20
    assert set(out.layer[400:410]) | set(out.layer[exact]) >= {dedup.METADATA}


def test_tiny_image_vectors_match_a_reposted_picture_and_not_another_one():
    from PIL import Image, ImageDraw

    from tads_assets.core.io.formats import tiny_image

    def picture(box):
        img = Image.new("RGB", (160, 120), (236, 222, 196))
        ImageDraw.Draw(img).ellipse(box, fill=(180, 30, 30))
        return img

    a = picture((40, 20, 100, 100))
    repost = a.crop((4, 3, 156, 117)).resize((120, 90)).point(lambda v: min(255, int(v * 1.05) + 6))
    other = picture((80, 40, 150, 110))
    pics = dedup.tiny_image_vectors([tiny_image(a), tiny_image(repost), tiny_image(other), None, bytes(768)])
    cos = pics.cos(np.array([0, 0, 0, 3, 4]), np.array([1, 2, 3, 0, 3]))
    assert cos[0] > 0.97 > cos[1]
    assert (cos[2:] == 0).all() and pics.has_picture.tolist() == [True, True, True, False, False]  # missing, flat


def test_tiny_image_keeps_colour_so_two_colourways_of_one_silhouette_differ():
    from PIL import Image, ImageDraw

    from tads_assets.core.io.formats import TINY_BYTES, tiny_image

    def shirt(colour):
        img = Image.new("RGB", (64, 64), (128, 128, 128))
        ImageDraw.Draw(img).rectangle((16, 10, 48, 56), fill=colour)
        return img

    red, green = shirt((200, 40, 40)), shirt((40, 121, 40))  # the same grey level, another colour
    assert abs(np.asarray(red.convert("L"), float) - np.asarray(green.convert("L"), float)).max() <= 1
    cos = dedup.tiny_image_vectors([tiny_image(red), tiny_image(green), tiny_image(red.resize((60, 60)))]).cos(
        np.array([0, 0]), np.array([2, 1]))
    assert len(tiny_image(red)) == TINY_BYTES
    assert cos[0] > 0.97 and cos[1] < 0.9


def test_tiny_image_vectors_refuse_descriptors_of_another_length():
    with pytest.raises(ValueError, match="row 1: a tiny-image thumbnail of 432 bytes.*materialize raw_pool again"):
        dedup.tiny_image_vectors([bytes(range(256)) * 3, bytes(432)])  # 432: the 12 x 12 descriptor before


def test_visual_candidates_pair_nearest_pictures_anywhere_and_skip_rows_without_a_descriptor():
    rng = np.random.default_rng(3)
    space = unit(rng.normal(size=(60, 16)))
    space[7] = unit(space[3] + 0.05 * rng.normal(size=16))  # a re-post of row 3
    has_picture = np.ones(60, bool)
    has_picture[11] = False  # no tiny-image descriptor
    pairs, nulls = dedup.visual_candidates(space, has_picture, k=2, null_offset=5)
    got = {tuple(p) for p in pairs.tolist()}
    assert (3, 7) in got and not any(11 in p for p in got)
    assert len(nulls) and not any(11 in p for p in nulls.tolist())
    assert not {(min(i, j), max(i, j)) for i, j in nulls.tolist()} & got  # nulls are never candidates
    assert dedup.visual_candidates(space, has_picture, k=2)[1].shape == (0, 2)  # no offset: no nulls


def test_a_repost_under_a_rewritten_caption_in_another_cluster_is_found_by_the_visual_search():
    """The joint space puts a re-post whose caption was rewritten next to other samples with that caption, in
    another cluster: only the visual search, which ignores clusters, pairs it with its original."""
    rng = np.random.default_rng(5)
    n = 400
    img = unit(rng.normal(size=(n, 16)))
    txt = unit(rng.normal(size=(n, 16)))
    tiny = unit(rng.normal(size=(n, 48)))
    captions = [f"listing {i} with its own words" for i in range(n)]
    # row n: re-post of row 0: the same picture, the caption and text vector of row 200 (another listing)
    img = np.vstack([img, unit(img[0] + 0.1 * rng.normal(size=16))])
    txt = np.vstack([txt, txt[200]])
    tiny = np.vstack([tiny, unit(tiny[0] + 0.04 * unit(rng.normal(size=48)))])
    captions.append(captions[200].upper() + " (repost)")
    sha = np.array([f"h{i}" for i in range(n + 1)], object)
    wh = np.full(n + 1, 64)
    run = lambda k: dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt,  # noqa: E731
                                      dedup.DedupParams(n_clusters=20, visual_neighbours=k), tiny_vec=tiny)
    with_search, without = run(10), run(0)
    assert with_search.kept[0] != with_search.kept[n] and with_search.layers[-1].extra["visual_search_pairs"] >= 1
    assert without.kept[0] and without.kept[n]  # the joint candidates never pair them
    assert (~with_search.kept[1:n]).sum() <= 0.01 * n
    assert "visual_null_pairs" in with_search.layers[-1].extra["calibration"]
    with pytest.raises(ValueError, match="visual_space must be one of"):
        dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt, dedup.DedupParams(visual_space="tiny"),
                          tiny_vec=tiny)


def _catalog(rng, n=1500, templates=8, reposts=30):
    """A catalogue: n distinct products (own picture) under a few template titles, product embeddings close within
    a category, and `reposts` re-posts of the first products (the same picture, lightly changed, the same title)."""
    cat = rng.integers(0, 4, n)
    centres = unit(rng.normal(size=(4, 32)))
    img = unit(centres[cat] + 0.06 * rng.normal(size=(n, 32)))
    title = rng.integers(0, templates, n)
    tvec = unit(rng.normal(size=(templates, 32)))
    txt = unit(tvec[title] + 0.05 * unit(img))
    tiny = unit(rng.normal(size=(n, 64)))
    src = np.arange(reposts)
    img = np.vstack([img, unit(img[src] + 0.003 * rng.normal(size=(reposts, 32)))])
    txt = np.vstack([txt, txt[src]])
    tiny = np.vstack([tiny, unit(tiny[src] + 0.12 * unit(rng.normal(size=(reposts, 64))))])
    captions = [f"Product title number {t} in stock" for t in title] + [f"Product title number {title[i]} in stock!"
                                                                         for i in src]
    m = n + reposts
    return img, txt, tiny, captions, np.array([f"h{i}" for i in range(m)], object), src


def test_calibration_keeps_distinct_products_under_one_title_and_removes_reposts():
    rng = np.random.default_rng(7)
    img, txt, tiny, captions, sha, src = _catalog(rng)
    n = len(captions) - len(src)
    wh = np.full(len(captions), 64)
    out = dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt, dedup.DedupParams(n_clusters=4),
                            tiny_vec=tiny)
    qual = out.layers[-1].extra
    cal = qual["calibration"]
    assert qual["mode"] == "text_and_image" and cal["attainable"] and cal["null_pairs"] > 1000
    assert cal["estimated_false_removal"] <= 0.01
    assert {"tau_vis", "tau_img"} <= set(cal["curves"])  # the calibration curves, for the metadata plot
    curve = dict(cal["curves"]["tau_img"])
    assert curve[cal["tau_img"]] <= 0.01 < curve[round(cal["tau_img"] - 0.01, 2)] or cal["tau_img"] == dedup.IMG_GRID[0]
    # the re-posts go, the distinct products under the same titles stay
    assert sum(out.kept[a] != out.kept[n + a] for a in src) >= len(src) - 1
    assert (~out.kept[:n]).sum() - (~out.kept[src]).sum() <= 0.01 * n  # at most the 1 % the calibration allows
    # the paper's text-only rule on the same pool removes most products, and calibration says it cannot help
    text = dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt,
                             dedup.DedupParams(n_clusters=4, redundancy="text"), tiny_vec=tiny)
    tcal = text.layers[-1].extra["calibration"]
    assert not tcal["attainable"] and "templated captions" in tcal["note"]
    assert (~text.kept[:n]).sum() > 0.5 * n


def test_calibration_without_null_pairs_keeps_the_configured_thresholds():
    params = dedup.DedupParams()
    cal = dedup.calibrate_thresholds(np.zeros((0, 2), np.int64), [], np.zeros((0, 4)), None, params)
    assert (cal["tau_vis"], cal["tau_img"], cal["null_rows"]) == (params.tau_vis, params.tau_img, 0)
    assert "no null pairs" in cal["note"]
    with pytest.raises(ValueError, match="max_false_removal"):
        dedup.calibrate_thresholds(np.zeros((0, 2), np.int64), [], np.zeros((0, 4)), None,
                                   dedup.DedupParams(max_false_removal=0.0))


def test_null_pairs_are_beyond_the_candidates_and_obey_their_filters():
    idx = np.array([[1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 3, 4], [0, 1, 2, 4], [0, 1, 2, 3]])
    cos = np.full(idx.shape, 0.9)
    cos[0, 3] = 0.5  # below min_joint_cos
    labels = np.array([0, 0, 0, 0, 1])
    cands = dedup.candidate_pairs(labels, idx[:, :1], cos[:, :1], 0.8)
    nulls = dedup.null_pairs(labels, idx, cos, k=2, offset=2, min_joint_cos=0.8, candidates=cands)
    got = {tuple(p) for p in nulls.tolist()}
    assert (1, 3) in got and (0, 4) not in got and (1, 4) not in got  # (0, 4): joint cosine 0.5; row 4: another cluster
    assert (0, 3) not in got  # ranks 3rd for row 0, but row 3's nearest neighbour is row 0: a candidate pair
    assert all(labels[i] == labels[j] for i, j in got)
    assert not {(min(i, j), max(i, j)) for i, j in got} & {tuple(p) for p in cands.tolist()}


def test_the_redundancy_rules():
    struct = np.array([True, False, False, True])
    text_cos = np.array([0.5, 0.99, 0.2, 0.3])
    tiny = np.array([0.2, 0.9, 0.97, 0.85])
    f = {m: dedup.redundant(m, struct, text_cos, tiny, 0.95, 0.95, 0.8)["red"].tolist() for m in dedup.REDUNDANCY_MODES}
    assert f["text"] == [True, True, False, True]
    assert f["text_or_image"] == [True, True, True, True]
    assert f["text_and_image"] == [False, True, True, True]  # pair 0: same title, another picture
    with pytest.raises(ValueError, match="redundancy must be one of"):
        dedup.redundant("image", struct, text_cos, tiny, 0.95, 0.95, 0.8)


def test_joint_null_pairs_start_at_null_first_rank_and_keep_the_estimate_honest():
    # a catalogue whose thumbnails follow the picture: the joint search ranks same-title products by how alike they
    # look, so the candidates' distinct pairs agree in the thumbnail more than pairs beyond the candidates do. Null
    # pairs from ranks 3 .. k+2 (the default starts at 5; candidates included) are as close as the candidates; the earlier
    # null beyond them (null_first_rank 0) estimated < 1 % false removal and lost 23 % of the distinct products
    rng = np.random.default_rng(0)
    n, reposts = 3000, 60
    cat = rng.integers(0, 4, n)
    centres = unit(rng.normal(size=(4, 32)))
    img = unit(centres[cat] + 0.06 * rng.normal(size=(n, 32)))
    title = rng.integers(0, 6, n)
    txt = unit(unit(rng.normal(size=(6, 32)))[title] + 0.05 * unit(img))
    tiny = unit((img - centres[cat]) @ rng.normal(size=(32, 64)) + 0.03 * unit(rng.normal(size=(n, 64))))
    src = np.arange(reposts)
    img = np.vstack([img, unit(img[src] + 0.003 * rng.normal(size=(reposts, 32)))])
    txt = np.vstack([txt, txt[src]])
    tiny = np.vstack([tiny, unit(tiny[src] + 0.12 * unit(rng.normal(size=(reposts, 64))))])
    captions = ([f"Product title number {t} in stock" for t in title]
                + [f"Product title number {title[i]} in stock!" for i in src])
    sha, wh = np.array([f"h{i}" for i in range(n + reposts)], object), np.full(n + reposts, 64)
    lost, recall, cal = {}, {}, {}
    for first in (dedup.DedupParams.null_first_rank, 3, 0):
        out = dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt,
                                dedup.DedupParams(n_clusters=4, null_first_rank=first), tiny_vec=tiny)
        cal[first] = out.layers[-1].extra["calibration"]
        lost[first] = float((~out.kept[reposts:n]).mean())  # distinct products without a re-post
        recall[first] = float(np.mean([out.kept[a] != out.kept[n + a] for a in src]))
        assert cal[first]["estimated_false_removal"] <= 0.01
    assert lost[0] > 0.1 and lost[3] < 0.05 and cal[3]["tau_img"] > cal[0]["tau_img"]
    assert recall[3] >= 0.95
    default = dedup.DedupParams.null_first_rank
    assert default == 5 and lost[default] < 0.05 and recall[default] >= 0.95
    with pytest.raises(ValueError, match="null_first_rank"):
        dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt, dedup.DedupParams(null_first_rank=-1),
                          tiny_vec=tiny)
    # deduplicate hands null_pairs the rows' neighbours from null_first_rank on, candidates kept: with k = 2 and
    # null_first_rank 1 the null pairs are exactly the candidate pairs' (query, neighbour) rows
    seen = {}
    real = dedup.null_pairs

    def spy(labels, nbr_idx, nbr_cos, k, offset, min_joint_cos, candidates):
        out = real(labels, nbr_idx, nbr_cos, k, offset, min_joint_cos, candidates)
        if min_joint_cos > -1.0:  # the joint nulls (the visual search passes -1)
            seen.update(offset=offset, candidates=len(candidates), nulls=out, first=nbr_idx[:, :k])
        return out

    dedup.null_pairs = spy
    try:
        dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt,
                          dedup.DedupParams(n_clusters=4, k_neighbours=2, null_first_rank=1), tiny_vec=tiny)
    finally:
        dedup.null_pairs = real
    assert seen["offset"] == 0 and seen["candidates"] == 0
    nulls = {tuple(p) for p in seen["nulls"].tolist()}
    assert (0, int(seen["first"][0, 0])) in nulls  # row 0 and its nearest neighbour: a candidate pair, and a null


def test_pictures_line_up_a_trimmed_repost_that_the_whole_frame_cosine_misses():
    from PIL import Image

    from tads_assets.core.io.formats import tiny_image

    rng = np.random.default_rng(0)

    def picture():  # detail at the scale of the 12 x 12 grid, where a trim of 5 % shifts the grid by 0.6 of a cell
        return Image.fromarray(rng.integers(0, 256, (10, 10, 3)).astype(np.uint8)).resize((120, 120), Image.BILINEAR)

    a, other = picture(), picture()
    repost = a.crop((6, 6, 120, 120)).resize((100, 100))  # trimmed by 5 % on the left and at the top, rescaled
    tiny = [tiny_image(x) for x in (a, repost, other)]
    robust, whole = dedup.tiny_image_vectors(tiny), dedup.tiny_image_vectors(tiny, max_trim=0.0)
    i, j = np.array([0, 0, 1]), np.array([1, 2, 0])
    r, w = robust.cos(i, j), whole.cos(i, j)
    assert robust.n_variants == 81 and whole.n_variants == 1
    assert r[0] > 0.98 and w[0] < 0.93  # the trimmed frame lines up; the whole frames do not (τ_vis: 0.93-0.97)
    assert r[1] < 0.5 and w[1] < 0.5  # another picture stays another picture
    assert r[2] == r[0] and np.allclose(w[0], whole.full[0] @ whole.full[1])  # symmetric; no trims: plain cosine
    assert np.array_equal(robust.cos(i, j), r)  # memoised: the same values again
    assert np.array_equal(robust[np.array([1, 0])].cos(np.array([0]), np.array([1])), r[:1])  # a subset's rows


def test_deduplicate_compares_pictures_with_the_configured_trim_and_records_it():
    from PIL import Image

    from tads_assets.core.io.formats import tiny_image

    rng = np.random.default_rng(1)
    pictures = [Image.fromarray(rng.integers(0, 256, (10, 10, 3)).astype(np.uint8)).resize((120, 120), Image.BILINEAR)
                for _ in range(40)]
    pictures.append(pictures[0].crop((6, 6, 120, 120)).resize((100, 100)))  # row 40: row 0 trimmed 5 % and rescaled
    n = len(pictures)
    img = unit(rng.normal(size=(n, 16)))
    img[40] = unit(img[0] + 0.05 * rng.normal(size=16))
    txt = unit(rng.normal(size=(n, 16)))  # unrelated captions: only the picture can tell
    captions = [f"listing {i}" + " words" * (i % 5) for i in range(n)]
    sha = np.array([f"h{i}" for i in range(n)], object)
    wh = np.full(n, 120)
    pics = dedup.tiny_image_vectors([tiny_image(p) for p in pictures])

    def run(trim):
        params = dedup.DedupParams(n_clusters=2, calibrate=False, tau_vis=0.95, picture_max_trim=trim)
        return dedup.deduplicate(sha, sha.copy(), captions, wh, wh, img, txt, params, tiny_vec=pics, progress=lambda m: None)

    robust, whole = run(0.05), run(0.0)
    assert robust.kept[0] != robust.kept[40] and robust.kept.sum() == n - 1
    assert whole.kept.all()  # whole frames: the trimmed re-post falls under τ_vis 0.95
    extra = robust.layers[-1].extra
    assert extra["picture_frames"] == 81 and extra["picture_max_trim"] == 0.05 and extra["picture_pairs"] > 0
    assert whole.layers[-1].extra["picture_frames"] == 1
    with pytest.raises(ValueError, match="picture_max_trim must lie in"):
        run(0.6)
