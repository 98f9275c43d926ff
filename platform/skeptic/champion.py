"""Pick a sweep's best eligible trial and register its model in the MLflow model registry
as a new version of `<study>`; the `champion` alias moves to it if it is at least as good."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from skeptic.distributed import result_checkpoint
from skeptic.review import Champion, SweepRef, split_name, version_description
from skeptic.schema import CHAMPION, Artifact, MlflowTag, Outcome, Tag
from skeptic.store import store_lock
from skeptic.study import Study, TrialResult, Verdict
from skeptic.trial import STATE_FILE

CODE = Path(__file__).with_name("pyfunc_model.py")


def _requirements() -> list[str]:
    # Given explicitly: MLflow's inference of requirements loads the model in a subprocess.
    names = ("torch", "numpy", "safetensors", "mlflow", "pydantic")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


@dataclass(frozen=True)
class Registration:
    """A registered model version and what became of the `champion` alias."""

    version: str
    champion: str | None  # the version the alias points at now
    reason: str  # why the alias moved or stayed, for the user

    @property
    def moved(self) -> bool:
        return self.champion == self.version


def register_champion(
    study: Study,
    state: dict[str, Any],
    params: dict[str, Any],
    run_id: str,
    tags: dict[str, str],
    score: float | None = None,
    policy: str = "best",
    metric: str | None = None,
    mode: str | None = None,
    description: str = "",
) -> Registration:
    """Log the weights + builder config (from a checkpointed `state`) under the trial's
    run and register it as a new version, with `tags` and `description`. The `champion`
    alias moves to it when `score` (the study's metric) is at least as good as the current
    champion's, or always with policy "latest"; concurrent sweeps on one SQLite store take
    turns (store_lock). `metric` and `mode` (default: the study's) are what `score`
    measures and which way is better."""
    metric = metric or study.metric
    tags = {**tags, Tag.METRIC: metric}
    if score is not None:
        tags[Tag.score(metric)] = f"{score:.6g}"
    model_uri, model_id = _log_model(study, state, params, run_id)
    client = MlflowClient()
    _ensure_registered_model(client, study)
    version = str(client.create_model_version(
        study.name, model_uri, run_id=run_id, tags=tags, description=description,
        model_id=model_id,
    ).version)  # fmt: skip
    with store_lock(mlflow.get_tracking_uri()):
        move, reason = _should_move(client, study, metric, mode or study.mode, score, policy)
        if move:
            client.set_registered_model_alias(study.name, CHAMPION, version)
    champion = version if move else str(_current(client, study.name).version)
    return Registration(version, champion, reason)


def _ensure_registered_model(client: MlflowClient, study: Study) -> None:
    """The study's registered model, described by its belief; another sweep may create it
    at the same moment."""
    try:
        client.create_registered_model(study.name, description=f"{study.belief}\n\n{study.paper}")
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _log_model(
    study: Study, state: dict[str, Any], params: dict[str, Any], run_id: str
) -> tuple[str, str]:
    """Log the model under `run_id` as MLflow pyfunc code + safetensors; return its URI
    and id."""
    config, state_dict = state["model_config"], state["model"]
    model = study.build_model(config)
    model.load_state_dict(state_dict)
    model.eval()
    example = study.model_input_example(config)
    output = study.predict(model, example)
    meta = {"study": study.name, "params": params, **study.model_metadata(config)}
    with tempfile.TemporaryDirectory() as tmp:
        weights, config_file = Path(tmp) / "weights.safetensors", Path(tmp) / "config.json"
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(weights))
        config_file.write_text(
            json.dumps({"study": study.name, "model_config": config}, default=str)
        )
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=Artifact.MODEL,
                python_model=str(CODE),
                artifacts={"weights": str(weights), "config": str(config_file)},
                signature=infer_signature(example, output),
                input_example=example,
                pip_requirements=_requirements(),
                metadata=json.loads(json.dumps(meta, default=str)),
            )
    return info.model_uri, info.model_id


def registered_before(study: Study, version: str) -> Registration:
    """A version this sweep registered already (it is judged again after a resume)."""
    current = _current(MlflowClient(), study.name)
    champion = str(current.version) if current else None
    return Registration(version, champion, "registered by this sweep before")


def _current(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def _should_move(
    client: MlflowClient, study: Study, metric: str, mode: str, score: float | None, policy: str
) -> tuple[bool, str]:
    current = _current(client, study.name)
    if current is None:
        return True, "the first champion"
    if policy == "latest":
        return True, f"--register latest (was version {current.version})"
    held = current.tags.get(Tag.score(metric))
    if score is None or held is None:
        return True, f"no {metric} to compare with version {current.version}"
    held_score = float(held)
    better = score >= held_score if mode == "max" else score <= held_score
    compare = f"{metric} {score:.4g} vs {held_score:.4g} of version {current.version}"
    return better, compare


def best_trial(
    study: Study, collected: list[tuple[TrialResult, Any]], metric: str, mode: str
) -> tuple[TrialResult, Any] | None:
    """The eligible trial (with its Tune result) that is best by `metric` (a validation
    metric: the sweep's selection metric)."""
    usable = [
        (t, r)
        for t, r in collected
        if t.outcome != Outcome.FAILED
        and result_checkpoint(r)
        and metric in t.final
        and study.champion_eligible(t)
    ]
    if not usable:
        return None
    sign = 1 if mode == "max" else -1
    return max(usable, key=lambda tr: sign * tr[0].final[metric])


def register_best(
    study: Study, best: tuple[TrialResult, Any], sweep: SweepRef, verdict: Verdict, policy: str,
    metric: str, mode: str,
) -> Registration:  # fmt: skip
    """Register the best trial's last checkpointed model, described and tagged with where it
    came from: the sweep, its verdict, the metric that chose it and on which split."""
    trial, result = best
    with result_checkpoint(result).as_directory() as path:
        state = torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")["state"]
    params = {k: v for k, v in trial.params.items() if k in study.Params.model_fields}
    score = trial.final[metric]
    tags = {
        Tag.STUDY: study.name, Tag.SWEEP_ID: sweep.sweep_id, Tag.VERDICT: verdict.label,
        MlflowTag.PARENT_RUN_ID: sweep.parent_run_id, Tag.SPLIT: split_name(metric),
        **{Tag.param(k): str(v) for k, v in trial.params.items()},
    }  # fmt: skip
    described = Champion(sweep, verdict.label, metric, score, trial.params)
    return register_champion(
        study, state, params, trial.run_id, tags, score, policy, metric, mode,
        description=version_description(study, described),
    )  # fmt: skip
