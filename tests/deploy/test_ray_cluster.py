"""The batch jobs on a real Ray cluster: `ray start --head` and a worker node on loopback, the jobs submitted
through the Ray Jobs API with the entry points of the KubeRay `RayJob` manifests (k8s/base/jobs) and the
settings of the dev overlay's ConfigMap, as KubeRay's submitter does.

What differs from Kubernetes, and only that: the pods' shared volume (`/home/ray/var`) is a temporary folder,
the dev overlay's MinIO is moto, the store is Qdrant Edge (no Qdrant server installs here), and the training
job runs one epoch on the tiny world instead of an hour on the small one. The cluster is stopped by killing
its own processes (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

from .test_manifests import render

pytestmark = pytest.mark.slow

POD_VAR = "/home/ray/var"  # the shared volume every Ray pod mounts (k8s/base/ray/raycluster.yaml)
RAY = str(Path(sys.executable).with_name("ray"))
JOB_TIMEOUT_S = 900


@dataclass
class Cluster:
    dashboard: str  # the Jobs API (the head's dashboard port)
    var: Path  # plays the pods' /home/ray/var
    env: dict[str, str]  # the pods' environment: the ConfigMap's settings


def job_entrypoint(job: str) -> str:
    """The entry point of the base RayJob labelled ``wherecnn.io/job=<job>``, as kustomize renders it."""
    for doc in render("k8s/base/jobs"):
        if doc["kind"] == "RayJob" and doc["metadata"]["labels"]["wherecnn.io/job"] == job:
            return str(doc["spec"]["entrypoint"])
    raise AssertionError(f"no RayJob for {job}")


def settings_configmap() -> dict[str, str]:
    """The dev overlay's `wherecnn-settings` ConfigMap (what every Ray pod gets through envFrom)."""
    maps = [d for d in render("k8s/overlays/dev") if d["kind"] == "ConfigMap"]
    (settings,) = [d for d in maps if d["metadata"]["name"] == "wherecnn-settings"]
    return {str(k): str(v) for k, v in settings["data"].items()}


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "node-manager-port", "object-manager-port", "metrics-export-port", "runtime-env-agent-port",
            "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
        )
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(
            [RAY, "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats", *ports, *args],
            env=env,
            cwd=log.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the teardown kills exactly this cluster
        )


def _kill_cluster(procs: list[subprocess.Popen[bytes]], marker: str) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    # workers Ray started in a session of their own: every process whose command line names this cluster
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def _wait_for_nodes(dashboard: str, n: int, procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + 180
    while True:
        for proc, log in zip(procs, logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(f"ray start exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            alive = [
                x for x in list_nodes(address=dashboard, raise_on_missing_output=False) if x.state == "ALIVE"
            ]
            if len(alive) >= n:
                return
        except Exception:  # the dashboard is not up yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(
                "the Ray cluster did not come up:\n" + "\n".join(p.read_text()[-2000:] for p in logs)
            )
        time.sleep(1.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: str) -> Iterator[Cluster]:
    import boto3
    from wherecnn.data.synthetic import generate

    var = tmp_path_factory.mktemp("pod") / "var"
    generate(var / "data" / "small", size="tiny", seed=0)  # where the manifests' --data/--tiles point
    settings = settings_configmap()
    assert settings["WHERECNN_WORK_DIR"] == POD_VAR and settings["WHERECNN_S3_ENDPOINT_URL"].startswith(
        "http"
    )
    settings = {k: v.replace(POD_VAR, str(var)) for k, v in settings.items()}
    settings |= {"WHERECNN_S3_ENDPOINT_URL": s3_server, "WHERECNN_STORE": f"edge://{var}/index"}
    bucket = settings["WHERECNN_CHECKPOINT"].removeprefix("s3://").split("/")[0]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    gcs, dash = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WHERECNN_")},
        **settings,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # as KubeRay sets it in every Ray container: the cluster's own processes never guess which Ray
        # instance on the machine is theirs
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    # short: Ray's unix sockets live under it (at most 107 bytes a path)
    temp = Path(tempfile.mkdtemp(prefix="wcnn-ray-", dir="/tmp"))
    logs = [temp / "head.log", temp / "worker.log"]
    # the head schedules no work (num-cpus 0, as in the RayCluster): drivers run there, the work on workers
    head = [
        "--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp}",
    ]  # fmt: skip
    procs = [_ray_start(head, env, logs[0])]
    dashboard = f"http://127.0.0.1:{dash}"
    try:
        _wait_for_nodes(dashboard, 1, procs, logs[:1])
        procs.append(_ray_start([f"--address=127.0.0.1:{gcs}", "--num-cpus=4"], env, logs[1]))
        _wait_for_nodes(dashboard, 2, procs, logs)
        yield Cluster(dashboard=dashboard, var=var, env=env)
    finally:
        _kill_cluster(procs, str(temp))


def _submit(cluster: Cluster, entrypoint: str) -> str:
    """Submit like KubeRay's submitter (`ray job submit --address <head>:8265 -- <entrypoint>`), wait, and
    return the job's log; a failed job fails the test with its log."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard)
    job = client.submit_job(entrypoint=entrypoint)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job)) not in (
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    ):
        if time.monotonic() > deadline:
            client.stop_job(job)
            pytest.fail(
                f"{entrypoint}: still {status} after {JOB_TIMEOUT_S} s:\n{client.get_job_logs(job)[-4000:]}"
            )
        time.sleep(2.0)
    logs = client.get_job_logs(job)
    (cluster.var / "jobs").mkdir(exist_ok=True)
    (cluster.var / "jobs" / f"{shlex.split(entrypoint)[1]}.log").write_text(logs)  # kept with pytest's tmp
    assert status == JobStatus.SUCCEEDED, f"{entrypoint}: {status}\n{logs[-6000:]}"
    return logs


def _s3_json(cluster: Cluster, uri: str) -> dict[str, object]:
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=cluster.env["WHERECNN_S3_ENDPOINT_URL"])
    return dict(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


@pytest.fixture(scope="module")
def trained(cluster: Cluster) -> tuple[list[str], str]:
    """The train job, submitted once for the module: (its argv as the manifest gives it, its log)."""
    entry = job_entrypoint("train")
    argv = shlex.split(entry)
    # one epoch on the tiny world's own pairs instead of an hour on the small world's fresh places
    budget = f"--minutes {argv[argv.index('--minutes') + 1]}"
    entry = entry.replace(POD_VAR, str(cluster.var)).replace(
        budget, "--epochs 1 --fresh-places 0 --batch-size 16 --val-size 16"
    )
    return argv, _submit(cluster, entry)


def test_train_job_on_two_workers_writes_its_checkpoint_to_s3(
    cluster: Cluster, trained: tuple[list[str], str]
) -> None:
    import boto3

    argv, logs = trained
    assert argv[argv.index("--workers") + 1] == "2"
    out = argv[argv.index("--out") + 1]
    assert out == cluster.env["WHERECNN_CHECKPOINT"], "the index job reads what the train job writes"
    card = _s3_json(cluster, f"{out}/model_card.json")
    assert card["train"]["workers"] == 2 and card["epoch"] == 1, card  # type: ignore[index]
    # Ray Train kept its own checkpoint beside ours, through the same S3 endpoint
    bucket, _, prefix = out.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=cluster.env["WHERECNN_S3_ENDPOINT_URL"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}-ray/").get("Contents", [])]
    assert any(k.endswith("model.pt") for k in keys), keys
    assert "Traceback" not in logs


def test_index_job_embeds_every_tile_with_the_trained_checkpoint(
    cluster: Cluster, trained: tuple[list[str], str]
) -> None:
    import pandas as pd
    from wherecnn.index.store import open_store

    logs = _submit(cluster, job_entrypoint("index").replace(POD_VAR, str(cluster.var)))
    tiles = pd.read_parquet(cluster.var / "data" / "small" / "tiles.parquet")
    card = _s3_json(cluster, f"{cluster.env['WHERECNN_CHECKPOINT']}/model_card.json")
    with open_store(cluster.env["WHERECNN_STORE"], read_only=True) as store:
        assert store.count() == len(tiles)
        assert store.tile_ids() == set(tiles["tile_id"].astype(str))
        _, _, payloads = store.all_vectors(str(tiles["city"].iloc[0]))
        assert {p["model"] for p in payloads} == {card["model_id"]}
    # the job's run folder is on the shared volume (WHERECNN_WORK_DIR) and agrees with the store
    (summary,) = [json.loads(p.read_text()) for p in (cluster.var / "runs").rglob("summary.json")]
    assert summary["embedded"] == len(tiles) and summary["engine"] == "ray", summary
    # a user's terminal (the job log) gets progress, not Ray's internal warnings
    assert "core_worker.cc" not in logs and "Traceback" not in logs, logs[-3000:]
