"""Spec validation: each bad input is an error that names the field; good input resolves."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field

from skeptic.spec import SpecError, count_trials, grid_points, load_spec, parse_set, resolve_params


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.1, gt=0)
    lr_rule: str = "none"
    depth: int = 2


DEFAULTS = {
    "sweep": {
        "space": {"batch_size": {"grid": [128, 512]}, "depth": {"grid": [1, 2]}},
        "derive": {"lr": {"source": "batch_size", "reference": 128, "rule_from": "lr_rule"}},
        "seeds": 2,
    }
}


def load(*sets: str, defaults: dict = DEFAULTS, spec_file=None):
    return load_spec("toy", defaults, P, sets=list(sets), spec_file=spec_file)


def test_defaults_resolve_and_count():
    spec = load()
    assert len(grid_points(spec)) == 4
    assert count_trials(spec) == 8


@pytest.mark.parametrize(
    ("assignment", "needle"),
    [
        ("sweep.seedz=3", "sweep.seedz: unknown key"),
        ("sweep.seeds=many", "sweep.seeds"),
        ("sweep.seeds=0", "sweep.seeds"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.lr=-0.1", "train.lr"),
        ("train.lrr=0.1", "train.lrr: unknown key"),
        ("resources.gpu=-1", "resources.gpu"),
        ("resources.cpus=2", "resources.cpus: unknown key"),
        ("sweep.scheduler.kind=hyperband", "sweep.scheduler.kind"),
        ("sweep.space.batch_size.grid=[0,128]", "train.batch_size"),
        ("sweep.space.nonsense.grid=[1]", "'nonsense' is not a training parameter"),
        ("sweep.space.lr.loguniform=[-1,1]", "loguniform bounds must be > 0"),
        ("sweep.space.lr.uniform=[1,0.5]", "low < high"),
    ],
)
def test_bad_input_names_the_field(assignment, needle):
    with pytest.raises(SpecError) as err:
        load(assignment)
    assert needle in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(SpecError, match="allows: .*seeds"):
        load("sweep.seedz=3")


def test_unknown_train_key_lists_allowed_params():
    with pytest.raises(SpecError, match="batch_size"):
        load("train.batchsize=3")


def test_set_parses_yaml_values():
    assert parse_set("a.b=[1, 2]") == {"a": {"b": [1, 2]}}
    assert parse_set("x=0.5") == {"x": 0.5}
    with pytest.raises(SpecError, match="key=value"):
        parse_set("novalue")


def test_spec_file_overrides_defaults_and_set_overrides_file(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("sweep:\n  seeds: 5\ntrain:\n  depth: 3\n")
    spec = load("sweep.seeds=4", spec_file=f)
    assert spec.sweep.seeds == 4 and spec.train["depth"] == 3


def test_spec_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load(spec_file=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(SpecError, match="mapping"):
        load(spec_file=bad)


def test_derived_learning_rate_sqrt_and_linear():
    spec = load()
    p = resolve_params(spec, P, {"batch_size": 512, "lr_rule": "sqrt"})
    assert p.lr == pytest.approx(0.2)
    p = resolve_params(spec, P, {"batch_size": 512, "lr_rule": "linear"})
    assert p.lr == pytest.approx(0.4)
    p = resolve_params(spec, P, {"batch_size": 512, "lr_rule": "none"})
    assert p.lr == pytest.approx(0.1)


def test_derive_rule_value_is_checked():
    with pytest.raises(SpecError, match="rule must be one of"):
        load("train.lr_rule=cubic")


def test_arms_override_grid_and_are_deduplicated():
    defaults = {
        "sweep": {
            "space": {"batch_size": {"grid": [256, 1024]}},
            "arms": {"SB": {"batch_size": 64}, "LB": {}, "deep": {"depth": 4}},
        }
    }
    points = grid_points(load(defaults=defaults))
    assert {"arm": "SB", "batch_size": 64} in points
    assert sum(p["arm"] == "SB" for p in points) == 1
    assert len(points) == 5


def test_unknown_arm_param_is_an_error():
    defaults = {"sweep": {"arms": {"X": {"widthh": 3}}}}
    with pytest.raises(SpecError, match="'widthh' is not a training parameter"):
        load(defaults=defaults)


def test_autocast_is_a_no_op_on_cpu():
    import torch

    from skeptic.trial import RunningTrial

    ctx = RunningTrial(None, 0, torch.device("cpu"), {}, None, "r", bf16=True)
    with ctx.autocast():
        out = torch.ones(2, 2) @ torch.ones(2, 2)
    assert out.dtype == torch.float32
