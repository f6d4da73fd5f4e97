"""infra/terraform is never applied in CI: parse it (python-hcl2) and check it agrees with the manifests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .test_manifests import render

TF = Path(__file__).resolve().parents[2] / "infra" / "terraform"


def _unq(value: Any) -> Any:
    return value.strip('"') if isinstance(value, str) else value


@pytest.fixture(scope="module")
def terraform() -> dict[str, list[dict[str, Any]]]:
    import hcl2  # python-hcl2, in the test extras

    merged: dict[str, list[dict[str, Any]]] = {}
    files = sorted(TF.glob("*.tf"))
    assert files, f"no .tf files in {TF}"
    for path in files:
        with path.open() as handle:
            try:
                parsed = hcl2.load(handle)
            except Exception as exc:  # the parser's errors carry line/column
                pytest.fail(f"{path.name}: not valid HCL: {exc}")
        for block, items in parsed.items():
            if not block.startswith("__"):
                merged.setdefault(block, []).extend(items)
    return merged


def _variables(tf: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {_unq(name): body for item in tf.get("variable", []) for name, body in item.items()}


def test_declares_bucket_role_policy_and_outputs(terraform: dict[str, list[dict[str, Any]]]) -> None:
    resources = {_unq(kind) for item in terraform["resource"] for kind in item}
    assert {"aws_s3_bucket", "aws_iam_role", "aws_iam_policy", "aws_iam_role_policy_attachment"} <= resources
    assert {
        "aws_s3_bucket_public_access_block",
        "aws_s3_bucket_server_side_encryption_configuration",
    } <= resources
    outputs = {_unq(name) for item in terraform["output"] for name in item}
    assert {"bucket", "ray_role_arn"} <= outputs


def test_every_variable_used_is_declared(terraform: dict[str, list[dict[str, Any]]]) -> None:
    declared = set(_variables(terraform))
    used = {m for path in TF.glob("*.tf") for m in re.findall(r"\bvar\.(\w+)", path.read_text())}
    assert used <= declared, f"undeclared variables: {sorted(used - declared)}"
    for name, body in _variables(terraform).items():
        assert body.get("description") and body.get("type"), (
            f"variable {name}: needs a description and a type"
        )


def test_irsa_trust_matches_the_prod_service_account(terraform: dict[str, list[dict[str, Any]]]) -> None:
    variables = _variables(terraform)
    namespace = _unq(variables["namespace"]["default"])
    service_account = _unq(variables["service_account"]["default"])
    prod = render("k8s/overlays/prod")
    sa = [d for d in prod if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == service_account]
    assert sa, f"prod overlay has no ServiceAccount {service_account}"
    assert sa[0]["metadata"]["namespace"] == namespace
    assert sa[0]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/wherecnn-ray")
    clusters = [d for d in prod if d["kind"] == "RayCluster"]
    accounts = {
        t["spec"]["serviceAccountName"]
        for c in clusters
        for t in [
            c["spec"]["headGroupSpec"]["template"],
            *(g["template"] for g in c["spec"]["workerGroupSpecs"]),
        ]
    }
    assert accounts == {service_account}
    trust = (TF / "main.tf").read_text()
    assert "system:serviceaccount:${var.namespace}:${var.service_account}" in trust
    assert "sts:AssumeRoleWithWebIdentity" in trust


def test_bucket_default_is_the_prod_bucket(terraform: dict[str, list[dict[str, Any]]]) -> None:
    bucket = _unq(_variables(terraform)["bucket_name"]["default"])
    settings = next(d for d in render("k8s/overlays/prod") if d["kind"] == "ConfigMap")["data"]
    assert settings["WHERECNN_CHECKPOINT"].startswith(f"s3://{bucket}/")
    for job in render("k8s/overlays/prod/jobs"):
        uris = re.findall(r"s3://([^/\s]+)/", job["spec"]["entrypoint"])
        assert uris and set(uris) == {bucket}, f"RayJob {job['metadata']['name']}: buckets {uris} != {bucket}"
