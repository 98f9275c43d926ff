"""The typed, validated sweep spec: study defaults <- preset <- smoke <- YAML file <- --set.

Every section forbids unknown keys, so a misspelt key is an error that names it.
The study's own training parameters are validated by the study's `Params` model.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

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
MAX_SEED = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes 32-bit seeds


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
            raise SpecError(f"train.{self.rule_from}: rule must be one of {RULES}, got {rule!r}")
        ratio = params[self.source] / self.reference
        return {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[rule]


class Scheduler(_Strict):
    kind: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2, gt=1)
    perturbation_interval: int = Field(2, ge=1)

    # The scheduler each option configures: set for another kind, it would be ignored.
    APPLIES_TO: ClassVar[dict[str, str]] = {
        "grace_period": "asha", "reduction_factor": "asha", "perturbation_interval": "pbt",
    }  # fmt: skip


class SeedRule(_Strict):
    """Seeds until decided: run `min` seeds, judge the study's deciding comparisons, and add
    `step` seeds to the trials of those still undecided, until each is decided or `max`."""

    min: int = Field(3, ge=2)  # a t interval needs 2 values per arm
    max: int = Field(10, ge=2)
    step: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> SeedRule:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) must be >= min ({self.min})")
        return self

    def looks(self) -> tuple[int, ...]:
        """The number of seeds at each look: min, min + step, ..., max."""
        return (*range(self.min, self.max, self.step), self.max)


class Sweep(_Strict):
    space: dict[str, Dim] = {}
    derive: dict[str, Derive] = {}
    arms: dict[str, dict[str, Any]] = {}
    # a number, or a sequential rule {min, max, step} (skeptic.stats.look_levels)
    seeds: int | SeedRule = Field(1)
    # what Tune optimises and the champion is chosen by (default: the study's metric);
    # a validation metric: test data are for the numbers the verdict reports
    metric: str | None = None
    mode: Literal["min", "max"] | None = None  # of sweep.metric (default: the study's)
    # numpy seeds (np.random.default_rng, SeedSequence) must be non-negative
    base_seed: int = Field(0, ge=0, le=MAX_SEED)
    num_samples: int = Field(1, ge=1)
    scheduler: Scheduler = Scheduler()
    max_concurrent_trials: int | None = Field(None, ge=1)
    max_failures: int = Field(0, ge=0)
    # Upstream stages (a baseline, a source model) run once and are shared by the trials;
    # false makes every trial run its own (only to measure what sharing saves).
    share_stages: bool = True


# Ray's resolution for fractional resources: finer requests are refused when a task starts.
RESOURCE_UNIT = 0.0001


class Resources(_Strict):
    # per training process: a trial has `workers` of them
    cpu: float = Field(1, ge=RESOURCE_UNIT)
    gpu: float = Field(0, ge=0)  # fractional values pack processes on one GPU
    # > 1: the trial is a Ray Train TorchTrainer (DDP) of this many processes, on any nodes;
    # the spec's batch size stays the global batch, split across them
    workers: int = Field(1, ge=1)
    bf16: bool = False  # bf16 autocast on CUDA, so it needs gpu > 0 (_check_resources)
    compile: bool = False  # torch.compile the trained model (off until measured per model)


class Data(_Strict):
    # skeptic.data.DATASET_NAMES
    name: Literal["shapes", "digits", "imagefolder", "cifar10", "cifar100", "table"] = "shapes"
    size: int = Field(2000, ge=10)
    val_fraction: float = Field(0.2, gt=0, lt=1)  # for every choice (lr, epoch, champion)
    test_fraction: float = Field(0.2, ge=0, lt=1)  # for the numbers the verdict reports
    path: str | None = None
    domain: str | None = None
    image_size: int = Field(32, ge=4, le=512)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    # imagefolder only: trials read images from disk through DataLoaders (ImageNet scale)
    # instead of getting decoded arrays; the study's training loop must stream
    stream: bool = False


class Model(_Strict):
    # weights the study's model starts from (e.g. ImageNet-pretrained ResNet-50), a file
    # on the machines the trials run on: nothing is downloaded
    weights_path: str | None = None


class Spec(_Strict):
    study: str
    preset: str | None = None  # the study's named spec this one started from (--preset)
    sweep: Sweep = Sweep()
    resources: Resources = Resources()
    data: Data = Data()
    model: Model = Model()
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


# A model validator cannot point at a field; its message may start with one ("depths: ...").
_FIELD_FIRST = re.compile(r"(?P<field>[A-Za-z_]\w*): (?P<rest>.*)", re.DOTALL)


def _format_errors(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        where = [prefix, *e["loc"]]
        msg = e["msg"].removeprefix("Value error, ")
        named = _FIELD_FIRST.fullmatch(msg) if e["type"] == "value_error" else None
        if named and not e["loc"]:
            where, msg = [prefix, named["field"]], named["rest"]
        loc = ".".join(str(p) for p in where if p != "")
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
    _check_resources(spec.resources)
    _check_sweep(spec.sweep)
    _check_data(spec.data)
    _validate_params(spec, params_model)
    return spec


def _check_resources(r: Resources) -> None:
    """What Ray or the trial would refuse or ignore once the sweep runs."""
    if 0 < r.gpu < RESOURCE_UNIT:
        raise SpecError(
            f"resources.gpu: {r.gpu} is below Ray's resolution; use 0 or >= {RESOURCE_UNIT}"
        )
    if r.gpu > 1 and not float(r.gpu).is_integer():
        raise SpecError(
            f"resources.gpu: {r.gpu} GPUs per trial; above 1 Ray takes whole GPUs only "
            "(fractions below 1, such as 0.25, pack trials on one GPU)"
        )
    if r.compile and r.gpu == 0:
        raise SpecError(
            "resources.compile: torch.compile is for CUDA trials here (on CPU its compile time "
            "outweighs the gain at these sizes); set resources.gpu > 0 or compile=false"
        )
    if r.bf16 and r.gpu == 0:
        raise SpecError(
            "resources.bf16: bf16 autocast runs on CUDA only, and resources.gpu=0 runs every "
            "trial on the CPU, where it would be ignored; set resources.gpu > 0 or bf16=false"
        )


def _check_sweep(sweep: Sweep) -> None:
    """Sweep options that would be ignored, or that Tune would refuse after Ray started."""
    if isinstance(sweep.seeds, int) and sweep.seeds < 1:
        raise SpecError(f"sweep.seeds: {sweep.seeds}: give at least 1, or a rule {{min, max, step}}")
    if sweep.metric is not None:
        check_selection_metric(sweep.metric, "sweep.metric")
    sampled = [name for name, dim in sweep.space.items() if dim.kind != "grid"]
    cfg = sweep.scheduler
    for name, kind in Scheduler.APPLIES_TO.items():
        # compared with the default, not "was it given": a resolved spec (a submitted job's,
        # a resumed sweep's) spells out every option
        if cfg.kind != kind and getattr(cfg, name) != Scheduler.model_fields[name].default:
            raise SpecError(
                f"sweep.scheduler.{name}: applies to kind {kind} only, and kind is {cfg.kind}; "
                f"unset it or set sweep.scheduler.kind={kind}"
            )
    if cfg.kind == "pbt" and not sampled:
        raise SpecError(
            "sweep.scheduler.kind: pbt needs at least one choice/uniform/loguniform dimension "
            "in sweep.space to mutate"
        )
    if sweep.num_samples > 1 and not sampled:
        raise SpecError(
            f"sweep.num_samples: {sweep.num_samples} samples of a sweep with no "
            "choice/uniform/loguniform dimension are identical trials (same seeds too); "
            "use sweep.seeds for repeats, or add a sampled dimension"
        )
    for name in sampled:
        arms = [arm for arm, values in sweep.arms.items() if name in values]
        if arms:
            raise SpecError(
                f"sweep.space.{name}: sampled per trial, but arms {', '.join(arms)} set {name} "
                "too and a trial's sampled value would replace the arm's (arms win over grid "
                "dimensions only); make it a grid dimension or take it out of the arms"
            )


def _check_data(data: Data) -> None:
    """The data section as the loaders would take it, without reading data.path (that
    needs the machine the sweep runs on: skeptic.preflight checks it there)."""
    from skeptic.data import DataError, plan_dataset  # numpy and the loaders: only when used

    try:
        plan_dataset(
            data.name, data.size, data.val_fraction, data.domain, data.path, data.image_size,
            scan=False, test_fraction=data.test_fraction, stream=data.stream,
        )  # fmt: skip
    except DataError as err:
        raise SpecError(f"data.{err.field}: {err}") from None


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
        try:
            out[target] = values[target] * rule.factor(values)
        except TypeError:  # a str or None parameter: nothing to scale, or nothing to scale by
            raise SpecError(
                f"sweep.derive.{target}: {target}={values[target]!r} and "
                f"{rule.source}={values[rule.source]!r} must both be numbers"
            ) from None
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
    sweep_params(spec, params_model)


def sweep_params(spec: Spec, params_model: type[BaseModel]) -> list[BaseModel]:
    """The validated parameters of every grid point, and of every grid point with each
    probe value of each sampled dimension (its choices; a range's bounds and a value
    inside it). Raises SpecError naming the field. Studies check cross-field constraints
    over these (every combination of grid values and arms is among them)."""
    out = []
    for point in grid_points(spec):
        out.append(resolve_params(spec, params_model, point))
        for name, dim in spec.sweep.space.items():
            for value in _probes(dim):
                where = f"sweep.space.{name}={value!r}"
                out.append(resolve_params(spec, params_model, {**point, name: value}, where))
    return out


def _probes(dim: Dim) -> list[Any]:
    """Values a sampled dimension can take that validation should see: every choice; for a
    range both bounds and an inside value that is not a whole number (uniform and loguniform
    sample floats, so an integer parameter would fail on almost every trial)."""
    if dim.kind == "grid":
        return []
    if dim.kind == "choice":
        return list(dim.choice)
    low, high = dim.uniform or dim.loguniform
    inside = low + (high - low) * 0.4142
    if float(inside).is_integer():
        inside += (high - low) * 1e-6
    return [low, high, inside]


def resolve_params(
    spec: Spec, params_model: type[BaseModel], point: dict, sample: str = ""
) -> BaseModel:
    """The trial's validated parameters: train defaults + sweep point, then derived values.
    `sample` names the sampled value in `point`, if any, for the error message."""
    where = f" (in sweep point {point})" if point else ""
    if sample:
        where = f" (with {sample} in sweep point {point})"
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


def seed_looks(spec: Spec) -> tuple[int, ...]:
    """How many seeds each trial has at each look: one look for a fixed number."""
    seeds = spec.sweep.seeds
    return (seeds,) if isinstance(seeds, int) else seeds.looks()


def seed_values(spec: Spec, start: int, stop: int) -> list[int]:
    """The seeds from the `start`-th up to (not including) the `stop`-th."""
    return [spec.sweep.base_seed + i for i in range(start, stop)]


def count_trials(spec: Spec) -> int:
    """Trials of the first (or only) look: every grid point x its seeds x samples."""
    return len(grid_points(spec)) * seed_looks(spec)[0] * spec.sweep.num_samples


def check_selection_metric(metric: str, field: str) -> None:
    """Choices (Tune's, the champion's) are made on validation data, never on test data."""
    if metric.startswith("test"):
        raise SpecError(
            f"{field}: {metric!r} is measured on the test split, which is kept for the "
            "numbers the verdict reports; choose by a validation metric (e.g. val_acc)"
        )


def load_spec(
    study_name: str,
    defaults: dict,
    params_model: type[BaseModel],
    smoke: dict | None = None,
    spec_file: str | Path | None = None,
    sets: list[str] = (),
    preset: tuple[str, dict] | None = None,
) -> Spec:
    """study defaults <- preset (its name, its spec) <- smoke <- --spec file <- --set,
    validated. The spec records the preset's name: no layer can claim another."""
    raw = deep_merge({"study": study_name}, defaults)
    if preset:
        raw = deep_merge(raw, preset[1])
    if smoke:
        raw = deep_merge(raw, smoke)
    if spec_file:
        raw = deep_merge(raw, read_spec_file(spec_file))
    for assignment in sets:
        raw = deep_merge(raw, parse_set(assignment))
    raw["preset"] = preset[0] if preset else None
    if raw.get("study") != study_name:
        raise SpecError(
            f"study: spec is for {raw.get('study')!r}, but the command runs {study_name!r}"
        )
    return validate_spec(raw, params_model)
