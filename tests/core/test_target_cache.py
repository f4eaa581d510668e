"""Task alignment's target model is trained once per selection, task set and recipe, then read from the cache."""

from tads_assets.core.harness.target_alignment import cached_target_scores, target_key


def test_the_target_is_trained_once_per_key_and_a_damaged_entry_is_recomputed(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return {"fashion": 0.25, "digits": 0.1}

    key = target_key(["b", "a"], "sha-tasks", "TADS-Tiny-ViT", 8192, 1000, 0, "cpu")
    assert cached_target_scores(tmp_path, key, train) == ({"fashion": 0.25, "digits": 0.1}, False)
    assert cached_target_scores(tmp_path, key, train) == ({"fashion": 0.25, "digits": 0.1}, True)
    assert len(calls) == 1
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cached_target_scores(tmp_path, key, train)[1] is False and len(calls) == 2


def test_the_key_follows_the_selection_the_tasks_and_the_recipe_not_the_uid_order():
    base = dict(uids=["a", "b"], tasks_sha256="t1", model="TADS-Tiny-ViT", budget_samples_seen=8192,
                validation_items=1000, seed=0, device="cpu")
    k = target_key(**base)
    assert target_key(**{**base, "uids": ["b", "a"]}) == k
    for change in ({"uids": ["a", "c"]}, {"tasks_sha256": "t2"}, {"model": "TADS-Tiny-RN"},
                   {"budget_samples_seen": 4096}, {"seed": 1}, {"validation_items": 500},
                   {"unnamed": {"garment": ["top"]}}):
        assert target_key(**{**base, **change}) != k, change
    # every class scored: the key of before (cached targets stay valid), whichever way "none left out" is said
    assert target_key(**base, unnamed={}) == target_key(**base, unnamed={"garment": []}) == k
