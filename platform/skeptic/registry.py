"""Register a sweep's best model in the MLflow model registry as `<study>@champion`."""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from safetensors.torch import save_file

from skeptic.study import Study

CHAMPION = "champion"
CODE = Path(__file__).with_name("pyfunc_model.py")


def _requirements() -> list[str]:
    # Given explicitly: MLflow's inference of requirements loads the model in a subprocess.
    names = ("torch", "numpy", "safetensors", "mlflow", "pydantic")
    return [f"{n}=={importlib.metadata.version(n)}" for n in names]


def register_champion(
    study: Study,
    state: dict[str, Any],
    params: dict[str, Any],
    run_id: str,
    tags: dict[str, str],
) -> str:
    """Log the weights + builder config (from a checkpointed `state`) under the trial's
    run, register it, point the `champion` alias at it, and return the new version."""
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
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # predict() is deliberately untyped (the signature below is the schema).
            warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(CODE),
                artifacts={"weights": str(weights), "config": str(config_file)},
                signature=infer_signature(example, output),
                input_example=example,
                registered_model_name=study.name,
                pip_requirements=_requirements(),
                metadata=json.loads(json.dumps(meta, default=str)),
            )
    version = str(info.registered_model_version)
    client = MlflowClient()
    client.set_registered_model_alias(study.name, CHAMPION, version)
    for key, value in tags.items():
        client.set_model_version_tag(study.name, version, key, value)
    return version
