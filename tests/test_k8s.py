"""The Kubernetes manifests in k8s/: build every kustomization and validate what it produces.

Offline, no cluster:
- `kubectl kustomize` builds k8s/base and every k8s/overlays/*;
- KubeRay kinds are checked against the openAPIV3Schema of KubeRay's CRDs, read from
  ../shared/k8s/crds (or $SKEPTIC_CRDS_DIR), in strict mode (unknown fields are errors);
- core kinds are checked with kubernetes-validate's bundled schemas, strict;
- the YAML embedded in strings (runtimeEnvYAML, serveConfigV2), the RayJob entrypoint and the
  `mlflow server` command line are parsed by the code that will consume them;
- policies: ClusterIP only, NetworkPolicies, RayJob clean-up, GPU only where intended,
  no password outside Secrets;
- planted mistakes must fail each of those checks.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
FLAVOURS = {"base": K8S / "base"} | {
    p.parent.name: p.parent for p in sorted((K8S / "overlays").glob("*/kustomization.yaml"))
}
CRDS_DIR = Path(os.environ.get("SKEPTIC_CRDS_DIR") or ROOT.parent / "shared" / "k8s" / "crds")
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}
RAY_KINDS = set(CRD_FILES)
NAMESPACE = "skeptic"
# Oldest Kubernetes minor we claim, and the newest kubernetes-validate knows.
K8S_FLOOR = "1.29"
HEAD_PORTS = (6379, 8265, 10001, 8000)
SECRET_EXAMPLE = K8S / "base" / "secret.example.yaml"

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ---- building -------------------------------------------------------------------------


@functools.cache
def _build(flavour: str) -> tuple[dict, ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH: it builds the kustomizations (kubectl kustomize)")
    proc = subprocess.run(
        [kubectl, "kustomize", str(FLAVOURS[flavour])],
        check=False, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, f"kubectl kustomize {flavour} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.load_all(proc.stdout, Loader=_Loader) if d is not None)


def built(flavour: str) -> list[dict]:
    """A fresh deep copy of the build output (tests may mutate it)."""
    return copy.deepcopy(list(_build(flavour)))


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def ray_cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": spec, "RayJob": spec.get("rayClusterSpec"),
            "RayService": spec.get("rayClusterConfig")}[doc["kind"]]  # fmt: skip


def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod template) for every pod a document makes."""
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["metadata"]["name"], doc["spec"]["template"]
    elif doc["kind"] in RAY_KINDS and (spec := ray_cluster_spec(doc)):
        yield f"{doc['metadata']['name']}/head", spec["headGroupSpec"]["template"]
        for group in spec.get("workerGroupSpecs") or []:
            yield f"{doc['metadata']['name']}/{group['groupName']}", group["template"]


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def walk(node: Any) -> Iterator[tuple[Any, Any]]:
    """Every (key, value) pair of every mapping, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request) -> str:
    return request.param


# ---- schemas --------------------------------------------------------------------------


def strict_schema(node: Any) -> Any:
    """An OpenAPI v3 / JSON schema made strict and plain-JSON-Schema compatible.

    - x-kubernetes-int-or-string: accept an integer or a string;
    - nullable: also accept null;
    - every object schema that lists `properties` but says nothing of others gets
      additionalProperties: false (x-kubernetes-preserve-unknown-fields ones stay open).
    """
    if not isinstance(node, dict):
        return node
    out = dict(node)
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    for key in ("properties", "patternProperties", "$defs", "definitions"):
        if isinstance(out.get(key), dict):
            out[key] = {name: strict_schema(sub) for name, sub in out[key].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        if isinstance(out.get(key), list):
            out[key] = [strict_schema(sub) for sub in out[key]]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict, data: Any) -> None:
    """Fill schema defaults into `data` in place, as the API server does before validating."""
    if isinstance(data, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in data and "default" in sub:
                data[name] = copy.deepcopy(sub["default"])
            if name in data:
                apply_defaults(sub, data[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name, value in data.items():
                if name not in props:
                    apply_defaults(extra, value)
    elif isinstance(data, list) and isinstance(schema.get("items"), dict):
        for item in data:
            apply_defaults(schema["items"], item)


def schema_errors(validator: jsonschema.protocols.Validator, doc: Any) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


@functools.cache
def _crd_schemas() -> dict[str, tuple[dict, jsonschema.Draft7Validator]]:
    missing = [f for f in CRD_FILES.values() if not (CRDS_DIR / f).is_file()]
    if missing:
        pytest.skip(
            f"KubeRay CRDs not found in {CRDS_DIR} (missing {', '.join(missing)}); "
            "set SKEPTIC_CRDS_DIR to a folder holding KubeRay's ray.io_*.yaml CRDs"
        )
    schemas = {}
    for kind, filename in CRD_FILES.items():
        crd = yaml.load((CRDS_DIR / filename).read_text(), Loader=_Loader)
        assert crd["spec"]["names"]["kind"] == kind, filename
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        raw = version["schema"]["openAPIV3Schema"]
        schemas[kind] = (raw, jsonschema.Draft7Validator(strict_schema(raw)))
    return schemas


def crd_errors(doc: dict) -> list[str]:
    """Strict validation of a ray.io/v1 document against KubeRay's CRD schema."""
    if doc.get("apiVersion") != "ray.io/v1":
        return [f"apiVersion {doc.get('apiVersion')!r} is not ray.io/v1"]
    raw, validator = _crd_schemas()[doc["kind"]]
    doc = copy.deepcopy(doc)
    apply_defaults(raw, doc)
    return schema_errors(validator, doc) + metadata_errors(doc["metadata"])


def metadata_errors(metadata: dict) -> list[str]:
    """The CRDs leave metadata open: check it as the ObjectMeta it is."""
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        unknown = set(metadata) - {"name", "namespace", "labels", "annotations"}
        return [f"metadata: unknown field {key!r}" for key in sorted(unknown)]
    return core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})


def _kubernetes_validate():
    return pytest.importorskip(
        "kubernetes_validate",
        reason="kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0)",
    )


def core_errors(doc: dict) -> list[str]:
    """Strict validation of a built-in kind, at the oldest and newest Kubernetes we know."""
    kv = _kubernetes_validate()
    errors = []
    for version in sorted({K8S_FLOOR, kv.latest_version()}):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            path = ".".join(str(p) for p in err.absolute_path) or "<root>"
            errors.append(f"k8s {version}: {path}: {err.message}")
    return errors


# ---- the strings inside the KubeRay documents -------------------------------------------


@functools.cache
def _serve_validator() -> jsonschema.Draft202012Validator:
    schema_mod = pytest.importorskip("ray.serve.schema", reason="ray[serve] is not installed")
    schema = schema_mod.ServeDeploySchema.model_json_schema()
    return jsonschema.Draft202012Validator(strict_schema(schema))


def serve_config_errors(text: str) -> list[str]:
    """serveConfigV2, parsed and checked like the dashboard's /api/serve/applications/."""
    config = yaml.safe_load(text)
    if not isinstance(config, dict):
        return [f"serveConfigV2 is not a mapping: {config!r}"]
    errors = schema_errors(_serve_validator(), config)
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as err:
        errors.append(f"ServeDeploySchema: {err}")
    apps = config.get("applications") or []
    if not apps:
        errors.append("serveConfigV2 has no applications")
    for key in ("name", "route_prefix"):
        values = [app.get(key) for app in apps if isinstance(app, dict)]
        if len(values) != len(set(values)):
            errors.append(f"applications: duplicate {key}: {values}")
    for app in apps:
        for key in ("name", "import_path", "route_prefix"):
            if not isinstance(app, dict) or not app.get(key):
                errors.append(f"application {app!r} lacks {key}")
        if isinstance(app, dict):
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", str(app.get("import_path"))):
                errors.append(f"import_path {app.get('import_path')!r} is not module:attribute")
            if not str(app.get("route_prefix", "")).startswith("/"):
                errors.append(f"route_prefix {app.get('route_prefix')!r} does not start with /")
    return errors


RUNTIME_ENV_FIELDS = {
    "working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "container", "image_uri",
    "config", "excludes", "java_jars", "worker_process_setup_hook", "py_executable", "_nsight",
}  # fmt: skip


def runtime_env_errors(text: str) -> list[str]:
    """runtimeEnvYAML: a mapping of known runtime_env fields that ray.runtime_env accepts."""
    env = yaml.safe_load(text)
    if not isinstance(env, dict):
        return [f"runtimeEnvYAML is not a mapping: {env!r}"]
    try:
        from ray.runtime_env import RuntimeEnv

        known = set(RuntimeEnv.known_fields)
    except ImportError:
        RuntimeEnv, known = None, RUNTIME_ENV_FIELDS
    errors = [f"runtimeEnvYAML: unknown field {key!r}" for key in env if key not in known]
    env_vars = env.get("env_vars", {})
    if not isinstance(env_vars, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
    ):
        errors.append(f"runtimeEnvYAML: env_vars must map strings to strings: {env_vars!r}")
    if not errors and RuntimeEnv is not None:
        try:
            RuntimeEnv(**env)
        except (TypeError, ValueError) as err:
            errors.append(f"ray.runtime_env.RuntimeEnv rejects it: {err}")
    return errors


def parse_entrypoint(entrypoint: str):
    """The RayJob entrypoint, parsed by Skeptic's own command-line parser."""
    argv = shlex.split(entrypoint)
    assert argv and argv[0] == "skeptic", f"entrypoint does not run skeptic: {entrypoint!r}"
    cli = pytest.importorskip("skeptic.cli", reason="skeptic is not installed")
    try:
        args, extra = cli.build_parser().parse_known_args(argv[1:])
    except SystemExit as err:
        raise ValueError(f"skeptic rejects {entrypoint!r} (exit {err.code})") from None
    if extra:
        raise ValueError(f"skeptic does not know {extra} in {entrypoint!r}")
    return args


def mlflow_server_params(container: dict) -> dict:
    """The `mlflow server` command line of a container, parsed by mlflow's own CLI."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    assert argv[:2] == ["mlflow", "server"], f"not an mlflow server: {argv}"
    cli = pytest.importorskip("mlflow.cli", reason="mlflow is not installed")
    return cli.server.make_context("server", argv[2:]).params


# ---- policy checks (each returns the problems it finds) -----------------------------------


def service_problems(docs: list[dict]) -> list[str]:
    problems = []
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Service" and doc["spec"].get("type") != "ClusterIP":
            problems.append(f"{name}: type {doc['spec'].get('type')!r}, not ClusterIP")
        if doc["kind"] in ("Ingress", "Gateway", "HTTPRoute", "Route"):
            problems.append(f"{name}: exposes the cluster")
        if doc["kind"] in RAY_KINDS:
            head = ray_cluster_spec(doc)["headGroupSpec"]
            if head.get("serviceType", "ClusterIP") != "ClusterIP":
                problems.append(f"{name}: head serviceType {head['serviceType']!r}")
            if head.get("enableIngress"):
                problems.append(f"{name}: head enableIngress")
            serve_svc = doc["spec"].get("serveService")
            if serve_svc and serve_svc.get("spec", {}).get("type", "ClusterIP") != "ClusterIP":
                problems.append(f"{name}: serveService type {serve_svc['spec']['type']!r}")
        for key, value in walk(doc.get("spec")):
            if key in ("hostNetwork", "hostPort") and value:
                problems.append(f"{name}: {key}")
    return problems


def _selects(selector: dict | None, labels: dict) -> bool:
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def ingress_allowed(
    policies: list[dict], target: dict, source: dict, same_namespace: bool, port: int
) -> bool:
    """Would a pod labelled `source` reach `port` of a pod labelled `target` (NetworkPolicy)?"""
    selecting = [
        p for p in policies
        if _selects(p["spec"].get("podSelector"), target)
        and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
    ]  # fmt: skip
    if not selecting:
        return True  # not isolated
    ns_labels = {"kubernetes.io/metadata.name": NAMESPACE if same_namespace else "elsewhere"}
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (None, port) for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True  # a rule without `from` admits every source
            for peer in peers:
                if "ipBlock" in peer:
                    return True  # an address range can hold any pod: count it as open
                if "namespaceSelector" in peer:
                    if _selects(peer["namespaceSelector"], ns_labels) and _selects(
                        peer.get("podSelector"), source
                    ):
                        return True
                elif same_namespace and _selects(peer.get("podSelector"), source):
                    return True
    return False


RAY_HEAD = {"ray.io/node-type": "head", "ray.io/is-ray-node": "yes", "ray.io/cluster": "c"}
RAY_WORKER = {"ray.io/node-type": "worker", "ray.io/is-ray-node": "yes", "ray.io/cluster": "c"}
OPERATOR = {"app.kubernetes.io/name": "kuberay-operator"}


def network_problems(docs: list[dict]) -> list[str]:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    problems = []
    if not any(
        _selects(p["spec"].get("podSelector"), RAY_HEAD)
        and p["spec"].get("podSelector", {}).get("matchLabels", {}).get("ray.io/node-type")
        == "head"
        for p in policies
    ):
        problems.append("no NetworkPolicy selects the Ray head (ray.io/node-type: head)")
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    postgres = one(docs, "StatefulSet", "postgres")["spec"]["template"]["metadata"]["labels"]
    expectations = [
        # (what, target, source, same namespace, port, allowed?)
        *[("head", RAY_HEAD, {}, True, p, True) for p in HEAD_PORTS],
        *[("head", RAY_HEAD, {}, False, p, False) for p in (*HEAD_PORTS, 52365)],
        *[("head", RAY_HEAD, RAY_WORKER, False, p, False) for p in HEAD_PORTS],
        ("head", RAY_HEAD, RAY_WORKER, True, 6380, True),  # raylet/object manager ports
        ("head", RAY_HEAD, OPERATOR, False, 8265, True),
        ("head", RAY_HEAD, OPERATOR, False, 6379, False),
        ("worker", RAY_WORKER, {}, False, 8000, False),
        ("worker", RAY_WORKER, RAY_HEAD, True, 10002, True),
        ("mlflow", mlflow, {}, True, 5000, True),
        ("mlflow", mlflow, {}, False, 5000, False),
        ("postgres", postgres, {}, True, 5432, False),
        ("postgres", postgres, mlflow, True, 5432, True),
        ("postgres", postgres, mlflow, False, 5432, False),
    ]
    for what, target, source, same_ns, port, expected in expectations:
        if ingress_allowed(policies, target, source, same_ns, port) != expected:
            where = "this namespace" if same_ns else "another namespace"
            verb = "cannot" if expected else "can"
            problems.append(f"a pod {source or '{}'} in {where} {verb} reach {what}:{port}")
    return problems


def rayjob_problems(docs: list[dict]) -> list[str]:
    problems = []
    for job in (d for d in docs if d["kind"] == "RayJob"):
        spec, name = job["spec"], job["metadata"]["name"]
        if "ttlSecondsAfterFinished" in spec and spec.get("shutdownAfterJobFinishes") is not True:
            problems.append(f"{name}: ttlSecondsAfterFinished without shutdownAfterJobFinishes")
        if not spec.get("shutdownAfterJobFinishes"):
            problems.append(f"{name}: the cluster outlives the job")
        if (spec.get("submitterConfig") or {}).get("backoffLimit") not in (0, 1):
            problems.append(f"{name}: submitterConfig.backoffLimit must be 0 or 1")
        if not spec.get("rayClusterSpec"):
            problems.append(f"{name}: no rayClusterSpec")
        env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}") or {}
        for key in ("working_dir", "py_modules"):
            if key in env:
                problems.append(f"{name}: runtimeEnvYAML uploads {key}; Skeptic is in the image")
    return problems


def secret_problems(docs: list[dict]) -> list[str]:
    problems = []
    literal_uri = re.compile(r"://[^/\s:@]+:(?!\$\()[^/\s@]+@")
    for doc in docs:
        if doc["kind"] == "Secret":
            problems.append(f"Secret/{doc['metadata']['name']} is built from the repo")
        for where, template in pod_templates(doc):
            for c in containers(template):
                for env in c.get("env") or []:
                    secretish = re.search(r"PASSWORD|PASSWD|SECRET|TOKEN", env["name"])
                    if secretish and "value" in env:
                        problems.append(f"{where}/{c['name']}: literal {env['name']}")
                    if secretish and "secretKeyRef" not in (env.get("valueFrom") or {}):
                        problems.append(f"{where}/{c['name']}: {env['name']} not from a Secret")
                for arg in list(c.get("command") or []) + list(c.get("args") or []):
                    if literal_uri.search(str(arg)):
                        problems.append(f"{where}/{c['name']}: password in {arg!r}")
    for name in ("mlflow", "postgres"):
        kind = "Deployment" if name == "mlflow" else "StatefulSet"
        envs = {
            e["name"]: e
            for c in one(docs, kind, name)["spec"]["template"]["spec"]["containers"]
            for e in c.get("env") or []
        }
        ref = (envs.get("POSTGRES_PASSWORD", {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            problems.append(f"{kind}/{name}: POSTGRES_PASSWORD does not come from a Secret")
    return problems


def gpu_requests(docs: list[dict]) -> list[str]:
    return [
        f"{doc['kind']}/{doc['metadata']['name']}"
        for doc in docs
        if any(key == "nvidia.com/gpu" for key, _ in walk(doc))
    ]


# ---- tests: build and validate ------------------------------------------------------------


def test_every_kustomization_builds(flavour):
    docs = built(flavour)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "RayCluster", "RayJob", "RayService", "Deployment", "StatefulSet",
            "Service", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap"} <= kinds  # fmt: skip
    seen = set()
    for doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, key


def test_base_lists_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in (K8S / "base").glob("*.yaml")} - {"kustomization.yaml"}
    assert SECRET_EXAMPLE.name not in listed, "the example Secret would be applied"
    assert on_disk - listed == {SECRET_EXAMPLE.name}
    assert kustomization["namespace"] == NAMESPACE


def test_core_documents_match_kubernetes_schemas(flavour):
    docs = [d for d in built(flavour) if d["kind"] not in RAY_KINDS]
    errors = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d in docs for e in core_errors(d)]
    assert errors == []


def test_kuberay_documents_match_the_crds(flavour):
    docs = [d for d in built(flavour) if d["kind"] in RAY_KINDS]
    assert {d["kind"] for d in docs} == RAY_KINDS
    errors = [f"{d['kind']}/{d['metadata']['name']}: {e}" for d in docs for e in crd_errors(d)]
    assert errors == []


def test_secret_example_is_a_valid_secret_with_the_referenced_keys(flavour):
    example = yaml.safe_load(SECRET_EXAMPLE.read_text())
    assert core_errors(example) == []
    keys = set(example["stringData"])
    for key, value in walk(built(flavour)):
        if key == "secretKeyRef":
            assert value["name"] == example["metadata"]["name"], value
            assert value["key"] in keys, value


def test_references_resolve(flavour):
    """Every ConfigMap and PVC a pod mounts or reads is part of the same build."""
    docs = built(flavour)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        claim_templates = {
            t["metadata"]["name"] for t in (doc.get("spec") or {}).get("volumeClaimTemplates", [])
        }
        for where, template in pod_templates(doc):
            for volume in template["spec"].get("volumes") or []:
                if claim := volume.get("persistentVolumeClaim"):
                    assert ("PersistentVolumeClaim", claim["claimName"]) in names, where
            for c in containers(template):
                for source in c.get("envFrom") or []:
                    if ref := source.get("configMapRef"):
                        assert ("ConfigMap", ref["name"]) in names, where
                mounts = {m["name"] for m in c.get("volumeMounts") or []}
                volumes = {v["name"] for v in template["spec"].get("volumes") or []}
                volumes |= claim_templates
                assert mounts <= volumes, f"{where}/{c['name']}: {mounts - volumes}"


# ---- tests: what the strings say -----------------------------------------------------------


def tracking_uri(docs: list[dict]) -> str:
    svc = one(docs, "Service", "mlflow")
    uri = f"http://{svc['metadata']['name']}:{svc['spec']['ports'][0]['port']}"
    assert one(docs, "ConfigMap", "skeptic-env")["data"]["MLFLOW_TRACKING_URI"] == uri
    return uri


def test_rayjob_entrypoint_and_runtime_env(flavour):
    docs = built(flavour)
    job = one(docs, "RayJob")["spec"]
    assert runtime_env_errors(job["runtimeEnvYAML"]) == []
    env_vars = yaml.safe_load(job["runtimeEnvYAML"])["env_vars"]
    assert env_vars["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env_vars["MLFLOW_TRACKING_URI"] == tracking_uri(docs)

    args = parse_entrypoint(job["entrypoint"])
    assert (args.command, args.study, args.address) == ("run", "large_batch", "auto")
    assert args.tracking_uri == tracking_uri(docs)
    # Tune's storage must be one volume that the head and every worker mount at that path.
    assert args.storage, "without --storage, Tune writes to a head-local path"
    claims = set()
    for where, template in pod_templates(one(docs, "RayJob")):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        ray = template["spec"]["containers"][0]
        mounted = [m for m in ray["volumeMounts"] if m["mountPath"] == args.storage]
        assert mounted, f"{where} does not mount {args.storage}"
        claims.add(volumes[mounted[0]["name"]]["persistentVolumeClaim"]["claimName"])
    assert len(claims) == 1
    (claim,) = claims
    if flavour == "base":
        pvc = one(docs, "PersistentVolumeClaim", claim)
        assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_rayservice_serve_config(flavour):
    docs = built(flavour)
    service = one(docs, "RayService")
    text = service["spec"]["serveConfigV2"]
    assert serve_config_errors(text) == []
    (app,) = yaml.safe_load(text)["applications"]
    assert app["import_path"] == "serving.app:build_app"
    assert app["route_prefix"] == "/large_batch"
    assert app["args"] == {"model": "large_batch@champion"}
    assert app["runtime_env"]["env_vars"]["MLFLOW_TRACKING_URI"] == tracking_uri(docs)
    # The head waits for exactly the model the app will load.
    head = ray_cluster_spec(service)["headGroupSpec"]["template"]["spec"]
    (wait,) = head["initContainers"]
    assert {"name": "SKEPTIC_MODEL", "value": app["args"]["model"]} in wait["env"]
    # Every Ray pod starts Serve in the HAProxy ingress mode that `skeptic serve` uses.
    wanted = {
        "RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    }  # fmt: skip
    for where, template in pod_templates(service):
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            assert {k: env.get(k) for k in wanted} == wanted, f"{where}/{container['name']}"


def test_init_container_scripts_compile(flavour):
    for doc in built(flavour):
        for where, template in pod_templates(doc):
            for c in template["spec"].get("initContainers") or []:
                command = c.get("command") or []
                if command[:2] == ["python", "-c"]:
                    compile(command[2], f"{where}/{c['name']}", "exec")


def test_mlflow_server_command(flavour):
    docs = built(flavour)
    deployment = one(docs, "Deployment", "mlflow")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    params = mlflow_server_params(container)
    assert params["serve_artifacts"] is True
    assert str(params["workers"]) == "1"
    assert params["host"] == "0.0.0.0"
    assert params["backend_store_uri"].startswith("postgresql://")
    assert "$(POSTGRES_PASSWORD)" in params["backend_store_uri"]
    assert params["artifacts_destination"]
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert params["artifacts_destination"] in mounts or "://" in params["artifacts_destination"]
    # Every name a client uses must pass MLflow's own Host-header check; others must not.
    from mlflow.server.security_utils import is_allowed_host_header

    allowed = [h.strip() for h in params["allowed_hosts"].split(",")]
    svc = one(docs, "Service", "mlflow")
    name, port = svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]
    assert params["port"] == port
    fqdn = f"{name}.{svc['metadata']['namespace']}.svc.cluster.local"
    for host in (f"{name}:{port}", f"{fqdn}:{port}", "localhost:5000", "127.0.0.1:15000"):
        assert is_allowed_host_header(allowed, host), host
    for host in ("evil.example.com", "mlflow.example.com:5000", "10.0.0.1:5000"):
        assert not is_allowed_host_header(allowed, host), host


# ---- tests: policies -----------------------------------------------------------------------


def test_policies_hold(flavour):
    docs = built(flavour)
    assert service_problems(docs) == []
    assert network_problems(docs) == []
    assert rayjob_problems(docs) == []
    assert secret_problems(docs) == []


def test_ray_clusters_autoscale_within_bounds(flavour):
    for doc in built(flavour):
        if doc["kind"] in RAY_KINDS:
            spec = ray_cluster_spec(doc)
            assert spec["enableInTreeAutoscaling"] is True
            assert spec["rayVersion"] == _ray_pin()
            for group in spec["workerGroupSpecs"]:
                assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_skeptic_containers_share_one_image_and_run_as_non_root(flavour):
    images = set()
    for doc in built(flavour):
        for where, template in pod_templates(doc):
            pod_security = template["spec"].get("securityContext") or {}
            for c in containers(template):
                if c["image"].split("/")[-1].startswith("skeptic"):
                    images.add(c["image"])
                    assert c.get("imagePullPolicy") == "IfNotPresent", where
                assert pod_security.get("runAsNonRoot") is True, where
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
                assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
    assert len(images) == 1, images


def test_base_has_a_gpu_worker_group_that_scales_from_zero():
    for doc in built("base"):
        if doc["kind"] in ("RayCluster", "RayJob"):
            groups = {g["groupName"]: g for g in ray_cluster_spec(doc)["workerGroupSpecs"]}
            gpu = groups["gpu"]
            resources = gpu["template"]["spec"]["containers"][0]["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
            assert all(
                "nvidia.com/gpu" not in (c.get("resources") or {}).get("limits", {})
                for name, g in groups.items() if name != "gpu"
                for c in g["template"]["spec"]["containers"]
            )  # fmt: skip


@pytest.mark.skipif("dev" not in FLAVOURS, reason="no k8s/overlays/dev")
def test_dev_overlay_is_cpu_only_with_one_worker():
    docs = built("dev")
    assert gpu_requests(docs) == []
    for doc in docs:
        if doc["kind"] in RAY_KINDS:
            groups = ray_cluster_spec(doc)["workerGroupSpecs"]
            assert [g["groupName"] for g in groups] == ["cpu"]
            assert groups[0]["maxReplicas"] == 1


def test_paper_overlay_runs_the_paper_preset_on_gpu_workers_with_its_data():
    from skeptic.study import get_study

    docs = built("paper")
    job = one(docs, "RayJob")
    args = parse_entrypoint(job["spec"]["entrypoint"])
    assert (args.study, args.preset, args.smoke) == ("large_batch", "paper", False)
    groups = {g["groupName"]: g for g in ray_cluster_spec(job)["workerGroupSpecs"]}
    assert groups["gpu"]["minReplicas"] >= 1 and groups["cpu"]["maxReplicas"] >= 0
    assert groups["cpu"]["replicas"] == 0
    preset = get_study("large_batch").presets["paper"].spec
    assert preset["resources"]["gpu"] >= 1
    data_path = preset["data"]["path"]
    for where, template in pod_templates(job):
        if "gpu" not in where and "head" not in where:
            continue
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        mount = [m for m in mounts if data_path.startswith(m["mountPath"] + "/")]
        assert mount and mount[0].get("readOnly"), f"{where} does not mount {data_path}"
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        claim = volumes[mount[0]["name"]]["persistentVolumeClaim"]["claimName"]
        assert one(docs, "PersistentVolumeClaim", claim)


# ---- tests: planted mistakes must fail -------------------------------------------------------


def test_planted_misspelt_rayjob_field_fails():
    job = one(built("base"), "RayJob")
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    errors = crd_errors(job)
    assert any("shutdownAfterJobFinish" in e for e in errors), errors


def test_planted_wrong_type_in_a_worker_group_fails():
    job = one(built("base"), "RayJob")
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    errors = crd_errors(job)
    assert any("workerGroupSpecs.0.replicas" in e and "'two'" in e for e in errors), errors


def test_planted_misspelt_pod_field_inside_a_raycluster_fails():
    cluster = one(built("base"), "RayCluster")
    container = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["imagePulPolicy"] = container.pop("imagePullPolicy")
    assert any("imagePulPolicy" in e for e in crd_errors(cluster))


def test_quantities_accept_int_or_string_but_nothing_else():
    cluster = one(built("base"), "RayCluster")
    limits = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    limits["limits"]["cpu"] = 2
    assert crd_errors(cluster) == []
    limits["limits"]["cpu"] = [2]
    assert crd_errors(cluster) != []


def test_planted_misspelt_deployment_field_fails():
    deployment = one(built("base"), "Deployment", "mlflow")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    errors = core_errors(deployment)
    assert errors and all("imagePulPolicy" in e for e in errors), errors
    deployment = one(built("base"), "Deployment", "mlflow")
    deployment["spec"]["replicas"] = "one"
    assert core_errors(deployment) != []


def test_planted_mistakes_in_embedded_strings_fail():
    docs = built("base")
    serve = one(docs, "RayService")["spec"]["serveConfigV2"]
    assert serve_config_errors(serve.replace("route_prefix:", "route_prefx:"))
    assert serve_config_errors(
        serve.replace("import_path: serving.app:build_app", "import_path: x")
    )
    runtime_env = one(docs, "RayJob")["spec"]["runtimeEnvYAML"]
    assert runtime_env_errors(runtime_env.replace("env_vars:", "env_var:"))
    assert runtime_env_errors(runtime_env.replace('"0"', "0"))
    entrypoint = one(docs, "RayJob")["spec"]["entrypoint"]
    with pytest.raises(ValueError):
        parse_entrypoint(entrypoint.replace("--tracking-uri", "--tracking-url"))
    container = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    container["args"] = [a.replace("--allowed-hosts", "--allowed-host") for a in container["args"]]
    with pytest.raises(Exception, match="allowed-host"):
        mlflow_server_params(container)


def test_planted_policy_violations_are_caught():
    base = built("base")

    docs = copy.deepcopy(base)
    one(docs, "Service", "mlflow")["spec"]["type"] = "NodePort"
    assert service_problems(docs)
    docs = copy.deepcopy(base)
    ray_cluster_spec(one(docs, "RayService"))["headGroupSpec"]["serviceType"] = "LoadBalancer"
    assert service_problems(docs)

    docs = copy.deepcopy(base)
    head = one(docs, "NetworkPolicy", "ray-head")
    head["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]})
    assert network_problems(docs)
    docs = copy.deepcopy(base)
    docs.remove(one(docs, "NetworkPolicy", "ray-head"))
    assert network_problems(docs)

    docs = copy.deepcopy(base)
    one(docs, "RayJob")["spec"].pop("shutdownAfterJobFinishes")
    assert rayjob_problems(docs)
    docs = copy.deepcopy(base)
    one(docs, "RayJob")["spec"].pop("submitterConfig")
    assert rayjob_problems(docs)

    docs = copy.deepcopy(base)
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    for env in mlflow["env"]:
        if env["name"] == "POSTGRES_PASSWORD":
            env.pop("valueFrom")
            env["value"] = "hunter2"
    assert secret_problems(docs)
    docs = copy.deepcopy(base)
    mlflow = one(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    mlflow["args"] = [a.replace("$(POSTGRES_PASSWORD)", "hunter2") for a in mlflow["args"]]
    assert secret_problems(docs)

    assert gpu_requests(base)


# ---- tests: the image ------------------------------------------------------------------------


@functools.cache
def _ray_pin() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray,) = [d for d in deps if re.match(r"ray(\[|=)", d)]
    return ray.split("==")[1]


def test_dockerfile_matches_the_project():
    dockerfile = (K8S / "Dockerfile").read_text().replace("\\\n", " ")
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE).group(1)
    assert base == f"rayproject/ray:{_ray_pin()}-py311"
    runs = re.findall(r"^RUN (.*)$", dockerfile, re.MULTILINE)
    torch_run = next(i for i, r in enumerate(runs) if '"torch==${TORCH_VERSION}"' in r)
    package_run = next(i for i, r in enumerate(runs) if "pip install ." in r)
    assert torch_run < package_run, "torch must be installed first, in its own pip call"
    assert "pip install ." not in runs[torch_run]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for arg in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        pinned = re.search(rf"^ARG {arg}=(\S+)$", dockerfile, re.MULTILINE).group(1)
        assert f"{arg}:-{pinned}}}" in setup, f"{arg}={pinned} differs from scripts/setup.sh"
    # Every package directory pyproject installs is copied into the image...
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = set(
        re.findall(r"^COPY \S+ (\S+) /home/ray/skeptic-src/\S*$", dockerfile, re.MULTILINE)
    )
    for where in find["packages"]["find"]["where"]:
        for pattern in find["packages"]["find"]["include"]:
            for pkg in (ROOT / where).glob(pattern.rstrip("*")):
                if (pkg / "__init__.py").is_file():
                    top = pkg.relative_to(ROOT).parts[0]
                    assert top in copied, f"{top}/ is installed by pyproject but not copied"
    # ...and let through the build-context filter, which drops everything else (.venv, .git).
    ignore = [
        line.strip()
        for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ignore[0] == "*"
    for path in copied | {"pyproject.toml", "README.md"}:
        assert f"!{path}" in ignore or f"!{path}/" in ignore, path
