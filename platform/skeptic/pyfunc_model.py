"""The MLflow pyfunc behind every registered Skeptic model, logged as *code*, not a pickle.

MLflow copies this file into the model and runs it on load ("models from code"):
the weights are read with safetensors and the network is rebuilt by the study's
own builder, so loading a model never unpickles anything from the artifact store.
Loading needs `skeptic` (and the study's package) importable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel, PythonModelContext


class SkepticModel(PythonModel):
    # np.ndarray is a type hint MLflow accepts without deriving a schema from it: the schema
    # (image shape, dtype) comes from the signature logged with the model.
    def load_context(self, context: PythonModelContext) -> None:
        from safetensors.torch import load_file

        from skeptic.study import get_study

        config = json.loads(Path(context.artifacts["config"]).read_text())
        self.study = get_study(config["study"])
        self.model = self.study.build_model(config["model_config"])
        self.model.load_state_dict(load_file(context.artifacts["weights"]))
        self.model.eval()

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> Any:
        return self.study.predict(self.model, np.asarray(model_input))


mlflow.models.set_model(SkepticModel())
