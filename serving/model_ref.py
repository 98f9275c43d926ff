"""Which registered model to serve: parse `name@alias` / `name/version`, resolve it in the
MLflow registry to one concrete version, and refuse formats that would unpickle code.

Used twice: by `skeptic serve` in the CLI process, so that an unknown model or alias is
an error before anything starts, and by `build_app` (which may run on the cluster, e.g.
under KubeRay), which pins the version it resolved into the deployment. Also reads what
a resolved version's tags say about it (`version_metric`), for /metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from skeptic.schema import Tag

# Registered-model names in Skeptic are study names; MLflow allows more, but a route
# prefix and an app name must stay simple, so the served name is checked separately.
_REF = re.compile(r"^(?P<name>[^@/\s]+)(?:@(?P<alias>[^@/\s]+)|/(?P<version>\d+))$")
_APP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")

# The one loader that rebuilds a model from code + safetensors (see skeptic.pyfunc_model).
SAFE_LOADER = "mlflow.pyfunc.loaders.code_model"
# The metric of versions registered before champion registration tagged the metric's name
# (Tag.METRIC) and of studies that keep Study.metric's default.
LEGACY_METRIC = "val_acc"


class ModelRefError(ValueError):
    """A model reference that is malformed, unknown, or not safe to load."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: str | None = None

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ResolvedModel:
    """One registered model version, as `skeptic serve` pins it."""

    name: str
    version: str
    ref: str  # what the user asked for, e.g. large_batch@champion
    alias: str | None
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)  # all of the version's tags

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def parse_model_ref(text: str) -> ModelRef:
    """`name@alias` or `name/version` (a bare `name` means `name@champion`)."""
    text = (text or "").strip()
    text = text.removeprefix("models:/")
    if text and "@" not in text and "/" not in text:
        text = f"{text}@champion"
    m = _REF.match(text)
    if not m:
        raise ModelRefError(
            f"bad model reference {text!r}: use NAME@ALIAS (e.g. large_batch@champion) "
            "or NAME/VERSION (e.g. large_batch/3)"
        )
    return ModelRef(m["name"], m["alias"], m["version"])


def check_app_name(name: str) -> str:
    """The Serve application name, also its route prefix `/<name>`."""
    if not _APP_NAME.match(name or ""):
        raise ModelRefError(
            f"bad serving name {name!r}: use letters, digits, '_', '-', '.' "
            "(at most 63, starting with a letter or digit); it becomes the route /<name>"
        )
    return name


def _not_found(err: Exception) -> bool:
    return (
        getattr(err, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"
        or "not found" in str(err).lower()
    )


def resolve(ref: ModelRef | str, tracking_uri: str) -> ResolvedModel:
    """Look the reference up in the registry at `tracking_uri`; the errors name what exists."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as err:
        if not _not_found(err):
            raise ModelRefError(f"cannot read the model registry at {tracking_uri}: {err}") from err
        names = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise ModelRefError(
            f"unknown model {ref.name!r} in the registry at {tracking_uri} "
            f"(registered models: {', '.join(names) or 'none'})"
        ) from None
    try:
        if ref.alias:
            mv = client.get_model_version_by_alias(ref.name, ref.alias)
        else:
            mv = client.get_model_version(ref.name, str(ref.version))
    except MlflowException as err:
        if not _not_found(err):
            raise ModelRefError(f"cannot read the model registry at {tracking_uri}: {err}") from err
        if ref.alias:
            aliases = ", ".join(f"{a} -> {v}" for a, v in sorted(registered.aliases.items()))
            raise ModelRefError(
                f"model {ref.name!r} has no alias {ref.alias!r} "
                f"(aliases: {aliases or 'none'}; or give a version: {ref.name}/N)"
            ) from None
        versions = sorted(
            (int(v.version) for v in client.search_model_versions(f"name='{ref.name}'")),
        )
        raise ModelRefError(
            f"model {ref.name!r} has no version {ref.version} "
            f"(versions: {', '.join(map(str, versions)) or 'none'})"
        ) from None
    return ResolvedModel(
        name=ref.name,
        version=str(mv.version),
        ref=str(ref),
        alias=ref.alias,
        run_id=mv.run_id,
        tags=dict(mv.tags or {}),
    )


def version_metric(tags: dict[str, str], study_metric: str | None = None) -> dict[str, Any]:
    """The metric a registered version was judged by, as /metadata reports it:
    `{"name": ..., "value": ...}`. Its name is the version's Tag.METRIC; versions registered
    before that tag existed fall back to the study's own metric (when the caller knows it),
    else to val_acc. The value is None when the version has no such tag."""
    name = tags.get(Tag.METRIC) or study_metric or LEGACY_METRIC
    return {"name": name, "value": _number(tags.get(Tag.score(name)))}


def _number(value: str | None) -> float | str | None:
    # A tag that is not a number is still shown, as written, rather than dropped.
    try:
        return float(value) if value is not None else None
    except ValueError:
        return value


def check_safe_format(model: ResolvedModel, tracking_uri: str) -> dict[str, Any]:
    """Read only the model's MLmodel file and refuse anything but Skeptic's code +
    safetensors format: a pickled pyfunc or a pickled torch module would run code from
    the artifact store on load. Returns the MLmodel's `metadata`."""
    import tempfile

    import mlflow
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        source = client.get_model_version_download_uri(model.name, model.version).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{source}/MLmodel", dst_path=tmp, tracking_uri=tracking_uri
            )
            info = Model.load(local)
    except Exception as err:  # any failure means "cannot serve this"
        raise ModelRefError(f"cannot read the MLmodel of {model.uri} ({model.ref}): {err}") from err
    pyfunc = info.flavors.get("python_function") or {}
    others = sorted(set(info.flavors) - {"python_function"})
    if pyfunc.get("loader_module") != SAFE_LOADER or others or "python_model" in pyfunc:
        raise ModelRefError(
            f"refusing to serve {model.uri}: it is not a Skeptic model logged from code "
            f"(flavors: {', '.join(sorted(info.flavors)) or 'none'}; loader: "
            f"{pyfunc.get('loader_module')}); loading it could unpickle code"
        )
    if info.signature is None or not info.signature.inputs.is_tensor_spec():
        raise ModelRefError(f"refusing to serve {model.uri}: it has no tensor input signature")
    return dict(info.metadata or {})
