"""The study interface, and how studies are found by name.

A study is a class decorated with `@register_study` in any module under the
`jobs` package (or a package named in SKEPTIC_STUDY_PACKAGES, or an entry point
in the `skeptic.studies` group). Nothing central lists them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel

from skeptic.contexts import StageContext, TrialContext
from skeptic.schema import Outcome
from skeptic.spec import Spec, SpecError
from skeptic.stats import Compare, Judged

if TYPE_CHECKING:
    import torch

    from skeptic.data import DataPlan


class SweepFailed(RuntimeError):
    """No trial of a sweep finished: there is nothing to judge or register."""


@dataclass
class TrialResult:
    """One finished (or stopped, or failed) trial, as the verdict sees it."""

    trial_id: str
    params: dict[str, Any]  # resolved training parameters, plus "seed" and, if any, "arm"
    history: list[dict[str, float]]  # one dict of metrics per reported epoch
    outcome: Outcome
    run_id: str | None = None

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


@dataclass(frozen=True)
class Stage:
    """An upstream stage: work many trials share (a trained baseline, a source model).

    It runs once per distinct (values of `depends_on`, seed), before the trials, stages of
    one kind in parallel; its result is cached in MLflow by a hash of that config, the data
    and the study's code, so re-running or resuming the study reuses it. A trial reads
    the results it needs from `ctx.upstream[stage.name]`.
    """

    name: str
    depends_on: tuple[str, ...]  # the trial's parameters (Params fields) that decide the result


@dataclass
class Evidence:
    """What a study's report shows besides the comparisons: its own summary lines, tables,
    figures and notes (the paper's numbers beside ours, what this scale cannot decide)."""

    summary: str = ""
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    details: str = ""  # extra Markdown for the report
    # the paper's numbers beside ours, one row per quantity: {"quantity", "paper", "ours",
    # "direction agrees" (yes / no / undecided), "note"}
    paper: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    """A named spec the study ships (`skeptic run STUDY --preset NAME`): the paper's own
    setting, say, with what it needs and what it costs. Its `spec` is merged over the
    study's defaults (study defaults <- preset <- --smoke <- --spec file <- --set)."""

    about: str  # one line: which table or figure of the paper it reproduces
    spec: dict  # the same keys as a --spec file
    data: str  # the data it expects and its layout on disk
    # GPU-seconds per training image (forward + backward) on one whole `gpu`: with the
    # study's `work`, the GPU-hours estimate --dry-run prints
    seconds_per_image: float
    gpu: str  # the GPU that figure is for
    cost_basis: str  # where the figure comes from ("measured: ..." or "stated: ...")
    train_images: int  # training images per epoch of the full dataset, if data.path is unread


@dataclass(frozen=True)
class Endpoint:
    """A route the served model answers (POST /<path>), declared by its study: the request
    and response schemas (pydantic models, so the app validates every request against them
    and documents them in /openapi.json) and the Study method that answers:
    `handler(model, request) -> response` (a `response` instance or a dict of its fields).
    A study with no endpoints is served as a labeller: POST /predict takes tensors or
    images and answers the top-k labels of `Study.predict`."""

    path: str  # one URL segment: "predict", "embed"
    request: type[BaseModel]
    response: type[BaseModel]
    handler: str  # the name of a Study method
    summary: str = ""  # one line for /docs


class InvalidRequest(ValueError):
    """An endpoint handler's answer to a request its schema accepts but its model cannot
    take (a scene of 5 slots for a 6-slot model): the app answers 422 with this message,
    which names the field first ("slots: ...")."""


@dataclass
class Verdict:
    """What a study concluded. `held` is True/False, or None when the run cannot decide;
    it comes from the study's rule (`Study.decide`) over its judged comparisons."""

    held: bool | None
    summary: str
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # file stem -> matplotlib Figure
    details: str = ""  # extra Markdown for the report
    comparisons: list[Judged] = field(default_factory=list)
    paper: list[dict[str, Any]] = field(default_factory=list)  # Evidence.paper
    reason: str = ""  # the study's rule, in one line: why this label

    @property
    def label(self) -> str:
        return {True: "held", False: "overturned", None: "undecided"}[self.held]


class Study(ABC):
    """Subclass, fill in the class attributes and methods, decorate with @register_study."""

    name: ClassVar[str]
    belief: ClassVar[str]  # the common belief under test, one sentence
    paper: ClassVar[str]  # the paper that questions it
    Params: ClassVar[type[BaseModel]]  # the trial's training parameters (extra="forbid")
    defaults: ClassVar[dict]  # default spec (sweep, data, resources, train)
    smoke: ClassVar[dict] = {}  # overrides for --smoke: a tiny sweep of a minute or two
    metric: ClassVar[str] = "val_acc"  # what Tune optimises and the champion is chosen by
    mode: ClassVar[str] = "max"
    # What the deciding comparisons judge: measured on the test split, which no choice saw.
    report_metric: ClassVar[str] = "test_acc"
    stages: ClassVar[tuple[Stage, ...]] = ()  # upstream stages, in the order they run
    presets: ClassVar[dict[str, Preset]] = {}  # named specs (every shipped study: "paper")
    # The Tune schedulers (sweep.scheduler.kind) whose decisions the verdict can live with,
    # and why the others are not (shown in the error). ASHA stops trials by comparing their
    # metric at the same iteration, so it needs trials whose iterations are comparable and
    # a verdict that does not read a stopped trial's last value as its result; PBT copies a
    # better trial's weights and config (its arm, its grid point) into a worse one, so it
    # suits a search for one best model, not a comparison of arms.
    schedulers: ClassVar[tuple[str, ...]] = ("fifo", "asha", "pbt")
    schedulers_reason: ClassVar[str] = ""

    def prepare_data(self, spec: Spec) -> dict[str, Any]:
        """Built once per sweep on the driver and shared with every trial via the object store.
        By default: the spec's `data` section, split into x_train/y_train (to train on),
        x_val/y_val (for every choice) and x_test/y_test (for the numbers the verdict
        reports) arrays plus the class names. CIFAR is only named here: each trial reads
        the same arrays from disk (skeptic.data.disk). A streamed image folder
        (data.stream) arrives as {"stream": FolderSource, "classes": [...]}."""
        from skeptic.data import CIFAR, DiskArrays, FolderSource, load_dataset
        from skeptic.data.disk import cifar_classes

        d = spec.data
        if d.name in CIFAR:
            source = DiskArrays(d.name, d.path, d.size, d.val_fraction, d.seed)
            return {"source": source, "classes": cifar_classes(d.name, d.path)}
        if d.stream:
            stream = FolderSource(d.path, d.domain, d.size, d.val_fraction, d.test_fraction, d.seed)
            return {"stream": stream, "classes": stream.classes}
        ds = load_dataset(
            d.name, d.size, d.val_fraction, seed=d.seed, domain=d.domain, path=d.path,
            image_size=d.image_size, test_fraction=d.test_fraction,
        )  # fmt: skip
        return {
            "x_train": ds.x_train, "y_train": ds.y_train, "x_val": ds.x_val, "y_val": ds.y_val,
            "x_test": ds.x_test, "y_test": ds.y_test, "classes": list(ds.classes),
        }  # fmt: skip

    def check_data(self, spec: Spec, *, scan: bool = True) -> DataPlan | None:
        """What `prepare_data` would build, checked without building it (spec time, before
        Ray or MLflow start); raise SpecError (or skeptic.data.DataError, for a field of the
        data section) naming the field. A study that overrides prepare_data overrides this.
        `scan=False`: do not read data.path (it may exist only where the sweep will run)."""
        from skeptic.data import plan_dataset

        d = spec.data
        if d.name == "table":
            raise SpecError(
                f"data.name: table is a file a study reads itself (e.g. beliefs' votes); "
                f"{self.name} reads images: shapes, digits, imagefolder, cifar10 or cifar100"
            )
        return plan_dataset(
            d.name, d.size, d.val_fraction, d.domain, d.path, d.image_size, scan=scan,
            test_fraction=d.test_fraction, stream=d.stream,
        )  # fmt: skip

    def check_spec(self, spec: Spec, data: DataPlan | None) -> None:
        """Constraints between the spec's sections that no single field's validation sees
        (e.g. the image size a model needs); `data` is what check_data returned. Raise
        SpecError naming the field. Checks within one trial's parameters belong in Params."""

    @abstractmethod
    def train(self, ctx: TrialContext[Any]) -> None:
        """One trial: train, calling ctx.report(metrics, state) once per epoch."""

    def run_stage(self, stage: str, ctx: StageContext) -> dict[str, Any]:
        """Run one upstream stage; return its result: tensors, numbers, strings, lists and
        dicts of them (it is saved with torch.save and loaded with weights_only=True)."""
        raise NotImplementedError(f"study {self.name!r} declares no stage {stage!r}")

    def comparisons(self, spec: Spec) -> list[Compare]:
        """The deciding comparisons (arm a vs arm b, the question, the margin and why),
        declared before any trial runs: a sequential seed rule adds seeds to the trials of
        the ones still undecided. The platform estimates, tests and decides each."""
        return []

    def decide(self, judged: Mapping[str, Judged]) -> tuple[bool | None, str]:
        """The belief's label from the comparisons' decisions (by name), with one sentence
        saying why: the study's whole decision rule, in one place."""
        return None, f"study {self.name} declares no deciding comparison"

    def evidence(self, results: list[TrialResult], spec: Spec, judged: list[Judged]) -> Evidence:
        """What the report shows besides the comparisons (tables, figures, notes)."""
        return Evidence()

    def work(self, params: BaseModel, train_images: int) -> float:
        """Training images one trial processes (forward + backward), for the GPU-hours
        estimate: `epochs` passes over the training set unless the study says otherwise
        (an arm that trains longer, a search of several learning rates per trial)."""
        return float(getattr(params, "epochs", 1)) * train_images

    def stage_work(self, stage: str, config: dict[str, Any], train_images: int) -> float:
        """The same for one run of an upstream stage (a baseline, a source model)."""
        return 0.0

    def run_name(self, params: dict[str, Any], swept: list[str]) -> str:
        """A readable MLflow run name built from the swept parameters and the seed."""
        parts = [f"{k}{_short(params[k])}" for k in swept if k in params]
        return "-".join([*parts, f"s{params.get('seed', 0)}"])

    # --- the registered model: weights + builder config, no pickled code ---

    # A trial that wants its model registered checkpoints `state["model"]` (the weights)
    # and `state["model_config"]` (a JSON-able dict from which build_model rebuilds it).

    def build_model(self, config: dict[str, Any]) -> torch.nn.Module:
        """Rebuild the (untrained) model from its saved model_config."""
        raise NotImplementedError(f"study {self.name!r} registers no model")

    def model_input_example(self, config: dict[str, Any]) -> np.ndarray:
        """A small numpy batch the registered model accepts (gives its signature)."""
        raise NotImplementedError

    def predict(self, model: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
        """What the served model answers for a numpy batch: class probabilities by default.
        A model that scores its labels otherwise returns {"scores": (batch, labels), name:
        (batch, labels, ...)}: the endpoint shows each top-k label's score and, for each
        other name, that label's entry (a localiser's homography per place, say)."""
        import torch

        device = next(model.parameters()).device
        with torch.no_grad():
            x = torch.as_tensor(batch, dtype=torch.float32, device=device)
            return torch.softmax(model(x), dim=-1).cpu().numpy()

    # The served routes: () serves a labeller (POST /predict: tensors or images -> top-k
    # labels); a study whose model takes other inputs (text, say) declares its own.
    endpoints: ClassVar[tuple[Endpoint, ...]] = ()

    def model_metadata(self, config: dict[str, Any]) -> dict[str, Any]:
        """Extra facts stored with the registered model (class names, input shape, ...)."""
        return {}

    def champion_eligible(self, trial: TrialResult) -> bool:
        """Whether this trial's model may be registered as the champion (e.g. only models
        that are really smaller); the best eligible trial by `metric` is."""
        return True


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


_STUDIES: dict[str, type[Study]] = {}  # name -> class, filled by @register_study
BROKEN: dict[str, str] = {}  # study module -> why it failed to import


def register_study(cls: type[Study]) -> type[Study]:
    """Class decorator: make a study findable by its `name`."""
    existing = _STUDIES.get(cls.name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ValueError(f"two studies named {cls.name!r}: {existing} and {cls}")
    _STUDIES[cls.name] = cls
    return cls


class UnknownStudy(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def _packages() -> list[str]:
    return [
        p.strip() for p in os.environ.get("SKEPTIC_STUDY_PACKAGES", "jobs").split(",") if p.strip()
    ]


def _import_by_name(name: str) -> None:
    """Import just `<package>.<name>`, the usual home of study `name`: a trial's worker then
    skips importing every other study (seconds each: timm, torch-pruning, ...)."""
    for package_name in _packages():
        module = f"{package_name}.{name}"
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            _load(module, lambda module=module: importlib.import_module(module))


def _discover() -> None:
    for package_name in _packages():
        try:
            package = importlib.import_module(package_name)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(package.__path__, prefix=f"{package_name}."):
            _load(info.name, lambda name=info.name: importlib.import_module(name))
    for entry in importlib.metadata.entry_points(group="skeptic.studies"):
        _load(entry.name, entry.load)


def _load(name: str, load: Any) -> None:
    # One broken study must not stop the others from running; it is named when asked for.
    try:
        load()
        BROKEN.pop(name, None)
    except Exception as err:  # noqa: BLE001  (any import error: syntax, missing module, ...)
        BROKEN[name] = f"{type(err).__name__}: {err}"


def all_studies() -> dict[str, type[Study]]:
    _discover()
    return dict(sorted(_STUDIES.items()))


def get_study(name: str) -> Study:
    if name not in _STUDIES:
        _import_by_name(name)
    if name not in _STUDIES:
        _discover()
    if name not in _STUDIES:
        known = ", ".join(sorted(_STUDIES)) or "none found"
        broken = "".join(f"; {module} failed to import: {why}" for module, why in BROKEN.items())
        raise UnknownStudy(f"unknown study {name!r} (known studies: {known}){broken}")
    return _STUDIES[name]()
