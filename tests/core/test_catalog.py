"""The catalogue: one location per stage output, typed handles that read only when asked, clear errors."""

import polars as pl
import pytest

from tads_assets.core.io.catalog import Catalog, Table


def test_every_asset_has_one_location_under_its_home(tmp_path):
    cat = Catalog(tmp_path)
    locations = {}
    assert len(cat.assets) == 17
    for name in cat.assets:
        handle = cat.of(name)
        assert handle.asset == name
        where = next(getattr(handle, a) for a in ("path", "dir", "uri", "baselines") if hasattr(handle, a))
        assert where.is_relative_to(tmp_path.resolve())
        locations[name] = (where, getattr(handle, "name", ""))
    assert len(set(locations.values())) == len(locations)  # no two assets share an output
    assert cat.subsets.of("tads") is cat.final_subset
    assert cat.subsets.of("random").path == tmp_path.resolve() / "parquet" / "baseline_subsets" / "random" / "subset.parquet"
    with pytest.raises(KeyError, match="no stage output named 'dedup'"):
        cat.of("dedup")


def test_reading_an_output_never_written_names_the_asset_to_materialize(tmp_path):
    cat = Catalog(tmp_path)
    with pytest.raises(FileNotFoundError, match="materialize quality_scores first"):
        cat.quality_scores.read()
    with pytest.raises(FileNotFoundError, match="materialize baseline_subsets\\[dbp\\] first"):
        cat.subsets.of("dbp").uids()
    with pytest.raises(FileNotFoundError, match="materialize task_set first"):
        cat.task_set.read()
    with pytest.raises(FileNotFoundError, match="raw_pool has no part part-00009"):
        cat.raw_pool.part("part-00009")


def test_handles_read_what_was_written(tmp_path):
    t = Table("weak_labels", tmp_path / "w" / "weak_labels.parquet")
    t.path.parent.mkdir(parents=True)
    pl.DataFrame({"uid": ["b", "a"], "y_weak": [0.1, 0.9]}).write_parquet(t.path)
    assert t.exists() and t.uids() == ["b", "a"] and t.height() == 2
    assert t.read(["y_weak"]).columns == ["y_weak"]
