"""Every spec field is checked at spec time: a bad value is one `skeptic: error:` line naming
the field (exit status 2), under `run` and `run --dry-run` alike, before Ray starts, before
data is prepared and before an MLflow store is created. Also: the spec-time checks of the
data loaders agree with what the loaders do, and the resource check sees one node at a time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import BaseModel, ConfigDict

from skeptic.spec import SpecError

FAST_S = 15  # an in-process refusal: no data prepared, no Ray, no MLflow
# A subprocess pays for importing torch, Ray and MLflow (about 8 s on 2 busy cores); a
# refusal that comes after Ray started and a stage trained took far longer.
SUBPROCESS_S = 30


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- test data ---------------------------------------------------------------------------


def _png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 6), colour).save(path)


def _folder(root: Path, classes: tuple[str, ...] = ("ant", "bee"), n: int = 3) -> Path:
    for c in classes:
        for i in range(n):
            _png(root / c / f"{i}.png", (40 * i, 100, 200 if c == classes[0] else 0))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Image folders a spec can point at: usable and unusable ones."""
    base = tmp_path_factory.mktemp("data")
    (base / "empty").mkdir()
    for c in ("ant", "bee"):  # class folders, but nothing that is an image
        (base / "no_images" / c).mkdir(parents=True)
        (base / "no_images" / c / "notes.txt").write_text("not an image")
        (base / "fake_png" / c).mkdir(parents=True)
        (base / "fake_png" / c / "0.png").write_bytes(b"not a png at all")
    _folder(base / "one_class", classes=("ant",))
    (base / "cifar").mkdir()
    for name in ("data_batch_1", "batches.meta", "test_batch"):  # CIFAR-10 python batches
        (base / "cifar" / name).write_bytes(b"\x80\x04pickled")
    _folder(base / "good")
    _folder(base / "office" / "amazon", classes=("bike", "mug"))
    _folder(base / "office" / "webcam", classes=("bike", "cup"))
    return {p.name: p for p in base.iterdir()} | {"missing": base / "missing"}


# ---- the CLI: every bad value exits 2 with one line, before anything starts ---------------

# (study, --set values, what the one error line must name). {name} is a folder above.
FOLDER = ["data.name=imagefolder", "data.domain=null"]  # large_batch's default domain: `noisy`
# What is wrong only on this machine: a dry run plans for a cluster too, so it lists these
# under "not ready on this machine" (exit 0); a run refuses them.
NOT_HERE = [
    ("large_batch", [*FOLDER, "data.path={missing}"], "data.path"),
    ("large_batch", ["resources.cpu=64"], "resources.cpu"),
    ("large_batch", ["resources.workers=64"], "resources.workers"),  # 2 cores: 2 fit at once
]


BAD = [
    # the data section, against the loaders
    ("large_batch", [*FOLDER], "data.path"),
    ("large_batch", [*FOLDER, "data.path={empty}"], "data.path"),
    ("large_batch", [*FOLDER, "data.path={no_images}"], "data.path"),
    ("large_batch", [*FOLDER, "data.path={fake_png}"], "data.path"),
    ("large_batch", [*FOLDER, "data.path={one_class}"], "data.path"),
    ("large_batch", [*FOLDER, "data.path={cifar}"], "data.path"),
    ("large_batch", ["data.name=imagefolder", "data.path={good}", "data.domain=x"], "data.domain"),
    ("large_batch", ["data.path={good}"], "data.path"),  # shapes: the path would be ignored
    ("large_batch", ["data.name=bogus"], "data.name"),
    ("large_batch", ["data.domain=bogus"], "data.domain"),
    ("large_batch", ["data.name=digits", "data.domain=dark"], "data.domain"),
    ("large_batch", ["data.size=1000000000"], "data.size"),
    ("large_batch", ["data.size=10"], "data.size"),  # nothing left for validation
    ("large_batch", ["data.image_size=100000"], "data.image_size"),
    ("large_batch", ["data.image_size=4"], "data.image_size"),  # shapes draw at >= 8
    ("large_batch", ["data.seed=-1"], "data.seed"),
    ("large_batch", ["data.name=table", "data.path=votes.csv"], "data.name"),
    ("beliefs", ["data.name=table"], "data.path"),
    ("beliefs", ["data.name=table", "data.path={good}"], "data.path"),  # a folder, not a table
    ("beliefs", ["data.name=digits"], "data.name"),
    ("beliefs", ["train.votes_per_user=1"], "train.votes_per_user"),
    ("consciousness", ["train.cued=3"], "train.cued"),  # `greater` compares two slots
    ("consciousness", ["data.name=digits", "data.path={good}"], "data.path"),
    ("consciousness", ["train.k=0"], "train.k"),
    ("large_batch", ["data.name=digits", "data.domain=null", "data.image_size=32"], "data.image_size"),
    ("few_shot", ["train.target_domain=bogus"], "train.target_domain"),
    ("few_shot", ["train.source_domain=bogus"], "train.source_domain"),
    ("few_shot", ["data.name=digits"], "data.name"),
    ("few_shot", ["data.domain=dark"], "data.domain"),
    (
        "few_shot",
        [
            "data.name=imagefolder",
            "data.path={office}",
            "data.image_size=8",
            "train.source_domain=amazon",
            "train.target_domain=webcam",
        ],
        "train.target_domain",
    ),
    # resources
    ("large_batch", ["resources.gpu=1.5"], "resources.gpu"),
    ("large_batch", ["resources.bf16=true"], "resources.bf16"),
    ("large_batch", ["resources.compile=true"], "resources.compile"),
    ("large_batch", ["resources.workers=0"], "resources.workers"),
    *NOT_HERE,
    # the sweep
    ("pruning", ["sweep.scheduler.kind=pbt"], "sweep.scheduler.kind"),
    ("pruning", ["sweep.scheduler.kind=asha"], "sweep.scheduler.kind"),
    ("large_batch", ["sweep.scheduler.grace_period=3"], "sweep.scheduler.grace_period"),
    ("large_batch", ["sweep.num_samples=3"], "sweep.num_samples"),
    ("large_batch", ["sweep.base_seed=-1"], "sweep.base_seed"),
    ("large_batch", ["sweep.space.lr_rule.choice=[none,sqrt]"], "sweep.space.lr_rule"),
    ("large_batch", ["sweep.space.width.uniform=[32,256]"], "train.width"),
    ("large_batch", ["sweep.space.width.choice=[0,64]"], "train.width"),
    (
        "large_batch",
        ["sweep.derive.lr={source: regime, reference: 64, rule_from: lr_rule}"],
        "sweep.derive.lr",
    ),
    ("large_batch", ["sweep.share_stages=false"], "sweep.share_stages"),
    ("pruning", ["sweep.space.width.choice=[8,16]"], "sweep.space"),  # a stage depends on it
    # values no trial would use
    ("few_shot", ["train.k=100000"], "train.k"),
    ("metaformer", ["train.lr_grid=[-1]"], "train.lr_grid"),
    ("few_shot", ["sweep.space.imbalance.grid=[5,10]"], "sweep.space.imbalance"),
    # the studies' own constraints
    ("metaformer", ["train.depths=[1,2]"], "train.depths"),
    ("metaformer", ["train.dims=[20,40,80]"], "train.dims"),
    ("metaformer", ["train.augment=heavy", "train.batch_size=33"], "train.batch_size"),
    ("metaformer", ["train.batch_size=4000"], "train.batch_size"),
    ("metaformer", ["train.warmup_epochs=18"], "train.warmup_epochs"),
    ("metaformer", ["data.image_size=8"], "data.image_size"),
    ("metaformer", ["data.name=digits"], "data.name"),
    ("pruning", ["train.width=3"], "train.ratio"),  # ratio 0.7 of 3 filters keeps none
    ("large_batch", ["train.base_batch=32"], "sweep.derive.lr.reference"),
    ("large_batch", ["train.lr_drops=[1.5]"], "train.lr_drops"),
    ("large_batch", ["sweep.space.batch_size.grid=[32]"], "train.ghost_batch"),
    ("few_shot", ["sweep.space.k.grid=[20]", "data.size=400"], "train.k"),
    ("few_shot", ["train.partial_keep=10"], "train.partial_keep"),
    ("few_shot", ["train.lr_grid=[-1]"], "train.lr_grid"),
]


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail at once, instead of running (or hanging), if a refused spec gets as far as
    preparing data or starting Ray (an MLflow store shows up as a file in the cwd)."""
    import ray

    from skeptic.study import all_studies

    def started(what: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"{what} although the spec is invalid")

        return fail

    if not ray.is_initialized():  # a session Ray from other tests may run; never start one
        monkeypatch.setattr(ray, "init", started("Ray was started"))
    for cls in all_studies().values():
        monkeypatch.setattr(cls, "prepare_data", started("data was prepared"))


def _args(sets: list[str], folders: dict[str, Path]) -> list[str]:
    out = []
    for value in sets:
        for name, path in folders.items():
            value = value.replace(f"{{{name}}}", str(path))
        out += ["--set", value]
    return out


@pytest.mark.parametrize(("study", "sets", "field"), NOT_HERE)
def test_dry_run_lists_what_this_machine_lacks(study, sets, field, folders, capsys, tmp_path, monkeypatch):
    from skeptic.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["run", study, *_args(sets, folders), "--dry-run"]) == 0
    assert f"not ready on this machine: {field}" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry_run", "run"])
@pytest.mark.parametrize(("study", "sets", "field"), BAD)
def test_bad_spec_is_one_error_line_naming_the_field(
    study, sets, field, dry_run, folders, nothing_starts, capsys, tmp_path, monkeypatch
):
    from skeptic.cli import main

    if dry_run and (study, sets, field) in NOT_HERE:
        pytest.skip("a dry run lists it (test_dry_run_lists_what_this_machine_lacks)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["run", study, *_args(sets, folders), *(["--dry-run"] if dry_run else [])]
    start = time.perf_counter()
    status = main(argv)
    took = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert status == 2, f"exit {status}; stdout {out[-500:]!r}; stderr {err[-2000:]!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skeptic: error: "), err
    assert field in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # no mlflow.db, mlartifacts/ or skeptic-runs/
    assert took < FAST_S


SUBPROCESS_CASES = [
    ("large_batch", [*FOLDER, "data.path={empty}"], "data.path", True),
    ("large_batch", ["resources.cpu=64"], "resources.cpu", False),
    ("pruning", ["sweep.scheduler.kind=pbt"], "sweep.scheduler.kind", False),
]


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int | None, str]:
    """(exit status, stderr); a command that hangs (a trial waiting for CPUs that never
    come) is killed with everything it started, Ray's processes included."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=2 * SUBPROCESS_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        return None, f"timed out after {2 * SUBPROCESS_S} s\n{stderr}"
    return proc.returncode, stderr


@pytest.mark.parametrize(("study", "sets", "field", "dry_run"), SUBPROCESS_CASES)
def test_real_cli_refuses_without_traceback_or_files(
    study, sets, field, dry_run, folders, tmp_path
):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    argv = [sys.executable, "-m", "skeptic", "run", study, *_args(sets, folders)]
    argv += ["--dry-run"] if dry_run else []
    start = time.perf_counter()
    status, stderr = _run(argv, tmp_path, env)
    took = time.perf_counter() - start
    assert status == 2, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skeptic: error: "), stderr[-3000:]
    assert field in lines[0] and "Traceback" not in stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "skeptic-runs").exists()
    assert took < SUBPROCESS_S, f"{took:.1f} s: did Ray start?"


def test_every_study_default_and_smoke_spec_passes_preflight():
    """The checks are not stricter than the studies themselves."""
    from skeptic.preflight import check_resources, preflight
    from skeptic.spec import load_spec
    from skeptic.study import all_studies

    for study_cls in all_studies().values():
        if study_cls.__module__.split(".")[0] not in ("jobs", "skeptic_test_studies"):
            continue  # a throwaway study some other test registered
        study = study_cls()
        for smoke in (None, study.smoke):
            spec = load_spec(study.name, study.defaults, study.Params, smoke)
            preflight(study, spec)
            check_resources(spec, None)


def test_good_image_folder_passes(folders, capsys, tmp_path, monkeypatch):
    from skeptic.cli import main

    monkeypatch.chdir(tmp_path)
    argv = ["run", "large_batch", "--dry-run", "--set", "data.name=imagefolder"]
    argv += ["--set", "data.domain=null", "--set", f"data.path={folders['good']}", "--set", "data.size=10"]
    assert main(argv) == 0, capsys.readouterr().err


# ---- the loaders' spec-time checks agree with the loaders -----------------------------------


def test_survey_says_what_is_wrong_with_a_folder(folders):
    from skeptic.data import survey_imagefolder

    assert survey_imagefolder(folders["good"]) == (["ant", "bee"], [3, 3])
    for name, needle in [
        ("missing", "not found"), ("empty", "no class folders"), ("no_images", "has no images"),
        ("fake_png", "cannot read image"), ("one_class", "at least 2"),
        ("cifar", "CIFAR-10 python batches"),
    ]:  # fmt: skip
        with pytest.raises((OSError, ValueError), match=needle):
            survey_imagefolder(folders[name])


@pytest.mark.parametrize(
    ("name", "size", "val_fraction", "image_size"),
    [("shapes", 137, 0.2, 8), ("shapes", 20, 0.5, 8), ("digits", 300, 0.25, 8),
     ("digits", 10**9, 0.2, 8), ("imagefolder", 5, 0.4, 4), ("imagefolder", 100, 0.2, 4)],
)  # fmt: skip
def test_plan_matches_what_load_dataset_returns(name, size, val_fraction, image_size, folders):
    from skeptic.data import load_dataset, plan_dataset

    path = str(folders["good"]) if name == "imagefolder" else None
    plan = plan_dataset(name, size, val_fraction, None, path, image_size)
    ds = load_dataset(name, size, val_fraction, path=path, image_size=image_size)
    assert (plan.n_train, plan.n_val) == (len(ds.y_train), len(ds.y_val))
    assert plan.input_shape == ds.input_shape and plan.classes == ds.classes
    counts = np.bincount(np.r_[ds.y_train, ds.y_val], minlength=len(ds.classes))
    assert plan.class_counts == counts.tolist()


def test_shapes_class_counts_are_what_make_shapes_draws():
    from skeptic.data import class_counts, make_shapes

    priors = np.linspace(1, 5, 10)
    _, y = make_shapes(97, 3, size=8, class_priors=priors, classes=[1, 2, 5, 7])
    assert class_counts(97, priors, [1, 2, 5, 7]).tolist() == np.bincount(y, minlength=10).tolist()


def test_dataset_names_are_the_specs():
    from typing import get_args

    from skeptic.data import DATASET_NAMES
    from skeptic.spec import Data

    assert get_args(Data.model_fields["name"].annotation) == DATASET_NAMES


def test_few_shot_k_bound_is_the_smallest_pool_class():
    """The refused k is exactly the first k the shot sampler could not serve."""
    from jobs.few_shot.study import FewShot, Params
    from skeptic.preflight import preflight
    from skeptic.spec import SpecError, load_spec

    study = FewShot()
    sets = ["data.size=400", "data.image_size=8", "sweep.space.scenario.grid=[label_shift]"]
    spec = load_spec(study.name, study.defaults, Params, sets=sets)
    smallest = int(np.bincount(study.prepare_data(spec)["label_shift.y_pool"]).min())
    ok = load_spec(
        study.name, study.defaults, Params, sets=[*sets, f"sweep.space.k.grid=[{smallest - 1}]"]
    )
    preflight(study, ok)
    too_many = [*sets, f"sweep.space.k.grid=[{smallest}]"]
    with pytest.raises(SpecError, match=f"train.k: k={smallest} .*allowed: k <= {smallest - 1}"):
        preflight(study, load_spec(study.name, study.defaults, Params, sets=too_many))


def test_pruning_ratio_bound_is_where_a_conv_would_keep_no_filter():
    from jobs.pruning import models
    from jobs.pruning.prune import structured_prune
    from jobs.pruning.study import Params

    config = models.model_config(models.base_channels(8), [3, 8, 8], list("ab"))
    pruned = structured_prune(models.build(config), [3, 8, 8], 0.875)
    assert models.channels_of(pruned)[0] == 1  # allowed, and pruned as asked
    Params(width=8, ratio=0.875)
    kept = structured_prune(models.build(config), [3, 8, 8], 0.9)
    assert models.channels_of(kept)[0] == 1  # a conv keeps one filter: pruned less than asked
    with pytest.raises(ValueError, match="ratio"):
        Params(width=8, ratio=0.9)
    Params(width=8, ratio=0.9, method="ticket")  # unstructured: every weight is prunable


# ---- values no trial would use: only those the user gave ---------------------------------


def test_study_defaults_that_arms_override_are_not_flagged():
    from skeptic.preflight import check_overridden
    from skeptic.spec import SpecError, load_spec
    from skeptic.study import get_study

    study = get_study("staged")  # tests/fixtures: grid over width and offset
    study.defaults = {**study.defaults, "train": {"width": 2}}  # instance attribute only
    check_overridden(study, load_spec(study.name, study.defaults, study.Params))
    given = load_spec(study.name, study.defaults, study.Params, sets=["train.width=3"])
    with pytest.raises(SpecError, match="train.width: 3 is never used, sweep.space.width"):
        check_overridden(study, given)
    # arms that all set offset override the study's own offset dimension: allowed...
    arms = "sweep.arms={a: {offset: 1.0}, b: {offset: 2.0}}"
    check_overridden(study, load_spec(study.name, study.defaults, study.Params, sets=[arms]))
    # ...but not a dimension the user gave
    dim = "sweep.space.offset.grid=[0.0, 3.0]"
    with pytest.raises(SpecError, match="sweep.space.offset: never used, every arm"):
        check_overridden(
            study, load_spec(study.name, study.defaults, study.Params, sets=[arms, dim])
        )
    # a resolved spec (a submitted job's, a resumed sweep's) repeats the defaults: still fine
    resolved = load_spec(study.name, study.defaults, study.Params).model_dump(mode="json")
    check_overridden(study, load_spec(study.name, resolved, study.Params))


# ---- resources: one trial must fit on one node -----------------------------------------------


def test_a_trial_must_fit_on_one_node():
    from skeptic.preflight import _check_fit

    nodes = [(8.0, 0.0), (4.0, 2.0)]  # a CPU node and a GPU node
    _check_fit(8, 0, nodes, "the cluster")
    _check_fit(4, 2, nodes, "the cluster")
    with pytest.raises(SpecError, match="resources.cpu: 12 CPUs"):  # 12 in all, 8 on a node
        _check_fit(12, 0, nodes, "the cluster")
    with pytest.raises(SpecError, match="resources.gpu: 3 GPUs"):
        _check_fit(1, 3, nodes, "the cluster")
    with pytest.raises(SpecError, match="resources.cpu: 6 CPUs and 1 GPUs .* at most 4"):
        _check_fit(6, 1, nodes, "the cluster")
    with pytest.raises(SpecError, match="resources.gpu: .* no GPU"):
        _check_fit(1, 0.5, [(2.0, 0.0)], "this machine")


def test_resources_are_checked_against_the_running_ray(ray_session):
    from skeptic.preflight import check_resources
    from skeptic.spec import load_spec

    cpus = ray_session.cluster_resources()["CPU"]
    check_resources(load_spec("toy", {}, NoParams, sets=[f"resources.cpu={cpus:g}"]), None)
    too_many = load_spec("toy", {}, NoParams, sets=[f"resources.cpu={cpus + 1:g}"])
    with pytest.raises(SpecError, match="the running Ray instance has"):
        check_resources(too_many, None)
