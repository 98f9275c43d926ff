"""The typed, validated sweep spec: study defaults <- smoke <- YAML file <- --set overrides.

Every section forbids unknown keys, so a misspelt key is an error that names it.
The study's own training parameters are validated by the study's `Params` model.
"""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SpecError(ValueError):
    """A bad spec: the message names the field and what is allowed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dim(_Strict):
    """One search-space dimension: exactly one of grid / choice / uniform / loguniform."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Dim:
        kinds = [
            k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None
        ]
        if len(kinds) != 1:
            raise ValueError("give exactly one of grid, choice, uniform, loguniform")
        values = self.grid if self.grid is not None else self.choice
        if values is not None and not values:
            raise ValueError(f"{kinds[0]} needs at least one value")
        bounds = self.uniform or self.loguniform
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{kinds[0]} needs [low, high] with low < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self

    @property
    def kind(self) -> str:
        return next(
            k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None
        )


RULES = ("none", "linear", "sqrt")


class Derive(_Strict):
    """Derive a parameter from another: target = base * rule(source / reference).

    `rule` fixes the rule for every trial; `rule_from` names a training parameter
    whose value ("none" / "linear" / "sqrt") picks the rule per trial.
    """

    source: str
    reference: float = Field(gt=0)
    rule: Literal["none", "linear", "sqrt"] | None = None
    rule_from: str | None = None

    @model_validator(mode="after")
    def _one_rule(self) -> Derive:
        if (self.rule is None) == (self.rule_from is None):
            raise ValueError("give exactly one of rule, rule_from")
        return self

    def factor(self, params: dict) -> float:
        rule = self.rule or params[self.rule_from]
        if rule not in RULES:
            raise SpecError(f"{self.rule_from}: rule must be one of {RULES}, got {rule!r}")
        ratio = params[self.source] / self.reference
        return {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[rule]


class Scheduler(_Strict):
    kind: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    perturbation_interval: int = Field(2, ge=1)


class Sweep(_Strict):
    space: dict[str, Dim] = {}
    derive: dict[str, Derive] = {}
    arms: dict[str, dict[str, Any]] = {}
    seeds: int = Field(1, ge=1)
    base_seed: int = 0
    num_samples: int = Field(1, ge=1)
    scheduler: Scheduler = Scheduler()
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0)
    # Upstream stages (a baseline, a source model) run once and are shared by the trials;
    # false makes every trial run its own (only to measure what sharing saves).
    share_stages: bool = True


class Resources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)  # per trial; fractional values pack trials on one GPU
    bf16: bool = False  # bf16 autocast on CUDA (ignored on CPU)


class Data(_Strict):
    name: str = "shapes"
    size: int = Field(2000, ge=10)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    path: str | None = None
    domain: str | None = None
    image_size: int = Field(32, ge=4)
    seed: int = 0


class Spec(_Strict):
    study: str
    sweep: Sweep = Sweep()
    resources: Resources = Resources()
    data: Data = Data()
    train: dict[str, Any] = {}


# ---- loading -----------------------------------------------------------------


# Overriding these replaces them whole: a search dimension's kind (grid -> choice) and
# the set of arms are not meaningfully merged.
REPLACED = {("sweep", "arms"), ("sweep", "space", "*"), ("sweep", "derive", "*")}


def _replaced(path: tuple[str, ...]) -> bool:
    return path in REPLACED or (*path[:-1], "*") in REPLACED


def deep_merge(base: dict, override: dict, path: tuple[str, ...] = ()) -> dict:
    """Merge `override` into a copy of `base`, mapping by mapping (see REPLACED)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        here = (*path, str(key))
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _replaced(here):
            out[key] = deep_merge(out[key], value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(assignment: str) -> dict:
    """`a.b.c=value` -> {"a": {"b": {"c": value}}}, value parsed as YAML (3, 0.1, [1,2], true)."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected key=value, e.g. sweep.seeds=3")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise SpecError(f"--set {assignment!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    out: dict = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def read_spec_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"--spec {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SpecError(f"--spec {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"--spec {path}: the top level must be a mapping, got {type(data).__name__}"
        )
    return data


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "literal_error":
            msg = f"{msg} (got {e.get('input')!r})"
        elif "input" in e and not isinstance(e["input"], dict):
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _allowed(model: type[BaseModel], section: str) -> str:
    return f"{section} allows: {', '.join(model.model_fields)}"


def validate_spec(raw: dict, params_model: type[BaseModel]) -> Spec:
    """Validate the merged spec dict; raise SpecError naming the bad field."""
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as err:
        hint = ""
        if any(e["type"] == "extra_forbidden" for e in err.errors()):
            bad = [e["loc"] for e in err.errors() if e["type"] == "extra_forbidden"]
            section = _section_model(bad[0][:-1]) if bad else None
            if section is not None:
                hint = f" ({_allowed(section, '.'.join(map(str, bad[0][:-1])) or 'the spec')})"
        raise SpecError(_format_errors(err) + hint) from None
    _validate_params(spec, params_model)
    return spec


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Spec
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def apply_derived(spec: Spec, values: dict) -> dict:
    """Return a copy of `values` with each derived parameter scaled by its rule."""
    out = dict(values)
    for target, rule in spec.sweep.derive.items():
        out[target] = values[target] * rule.factor(values)
    return out


def _check_params(params_model: type[BaseModel], values: dict, where: str) -> BaseModel:
    values = {k: v for k, v in values.items() if k != "arm"}
    try:
        return params_model.model_validate(values)
    except ValidationError as err:
        msg = _format_errors(err, prefix="train")
        if any(e["type"] == "extra_forbidden" for e in err.errors()):
            msg += f" ({_allowed(params_model, 'train')})"
        raise SpecError(f"{msg}{where}") from None


def _validate_params(spec: Spec, params_model: type[BaseModel]) -> None:
    known = set(params_model.model_fields)
    derived = [n for d in spec.sweep.derive.values() for n in (d.source, d.rule_from) if n]
    swept = list(spec.sweep.space) + [k for arm in spec.sweep.arms.values() for k in arm]
    for name in swept + list(spec.sweep.derive) + derived:
        if name not in known:
            raise SpecError(
                f"sweep: {name!r} is not a training parameter of study {spec.study!r} "
                f"(allowed: {', '.join(sorted(known))})"
            )
    _check_params(params_model, spec.train, "")
    for point in grid_points(spec):
        resolve_params(spec, params_model, point)
    for name, dim in spec.sweep.space.items():
        for bound in dim.uniform or dim.loguniform or ():
            _check_params(params_model, {**spec.train, name: bound}, f" (sweep.space.{name} bound)")


def resolve_params(spec: Spec, params_model: type[BaseModel], point: dict) -> BaseModel:
    """The trial's validated parameters: train defaults + sweep point, then derived values."""
    where = f" (in sweep point {point})" if point else ""
    base = _check_params(params_model, {**spec.train, **point}, where)
    derived = apply_derived(spec, base.model_dump())
    return _check_params(params_model, derived, f" (after derive{where})")


def grid_points(spec: Spec) -> list[dict]:
    """Cartesian product of grid dims x arms, arm values winning, duplicates removed."""
    grid = {k: d.grid for k, d in spec.sweep.space.items() if d.kind == "grid"}
    keys = list(grid)
    arms = spec.sweep.arms.items() or [(None, {})]
    points, seen = [], set()
    for combo in itertools.product(*grid.values()):
        for arm_name, arm in arms:
            point = {**dict(zip(keys, combo)), **arm}
            if arm_name is not None:
                point["arm"] = arm_name
            key = json.dumps(point, sort_keys=True, default=str)
            if key not in seen:
                seen.add(key)
                points.append(point)
    return points


def count_trials(spec: Spec) -> int:
    return len(grid_points(spec)) * spec.sweep.seeds * spec.sweep.num_samples


def load_spec(
    study_name: str,
    defaults: dict,
    params_model: type[BaseModel],
    smoke: dict | None = None,
    spec_file: str | Path | None = None,
    sets: list[str] = (),
) -> Spec:
    raw = deep_merge({"study": study_name}, defaults)
    if smoke:
        raw = deep_merge(raw, smoke)
    if spec_file:
        raw = deep_merge(raw, read_spec_file(spec_file))
    for assignment in sets:
        raw = deep_merge(raw, parse_set(assignment))
    if raw.get("study") != study_name:
        raise SpecError(
            f"study: spec is for {raw.get('study')!r}, but the command runs {study_name!r}"
        )
    return validate_spec(raw, params_model)
