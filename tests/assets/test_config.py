"""Run config derived from the library's parameter dataclasses: same fields, same defaults, no copies."""

import dataclasses

import pytest

from tads_assets.config import config_from, params_of
from tads_assets.core.method.dedup import DedupParams
from tads_assets.core.method.proxy import ProxyParams
from tads_assets.pool import DedupConfig
from tads_assets.select import TrainedDvnConfig


def test_a_config_has_the_dataclass_fields_and_defaults():
    fields = DedupConfig.model_fields
    assert list(fields) == [f.name for f in dataclasses.fields(DedupParams)]
    assert {k: f.default for k, f in fields.items()} == dataclasses.asdict(DedupParams())
    assert params_of(DedupConfig(tau_edit=0.3), DedupParams) == DedupParams(tau_edit=0.3)


def test_prefixed_and_excluded_fields_and_overrides():
    assert "rate" not in TrainedDvnConfig.model_fields  # the data budget is the `budget` resource
    assert TrainedDvnConfig.model_fields["proxy_steps"].default == ProxyParams.steps
    cfg = TrainedDvnConfig(proxy_steps=7, seed=3)
    assert params_of(cfg, ProxyParams, prefix="proxy_", seed=cfg.seed) == ProxyParams(steps=7, seed=3)


def test_a_changed_default_flows_into_the_config():
    @dataclasses.dataclass
    class P:
        alpha: float = 0.25
        name: str = "x"

    C = config_from("C", "doc", P, extra={"flag": (bool, True)})
    assert C().alpha == 0.25 and C().flag is True and C.__doc__ == "doc"
    with pytest.raises(Exception):
        C(alpha="not a number")


def test_one_field_with_two_defaults_is_refused():
    @dataclasses.dataclass
    class A:
        seed: int = 0

    @dataclasses.dataclass
    class B:
        seed: int = 1

    with pytest.raises(ValueError, match="X.seed: two sources give it the defaults 0 and 1"):
        config_from("X", "doc", A, B)
