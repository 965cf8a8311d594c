"""The Kubernetes example: an Indexed Job whose pods run the shards the merge Job then reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from batchgen.cli import cli
from batchgen.outputs.shards import Shard, resolve_shard

MANIFEST = Path(__file__).resolve().parent.parent / "examples/kubernetes/batchgen-indexed-job.yaml"


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")) if doc]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_indexed_job_runs_one_shard_per_completion_index_beside_its_a1111() -> None:
    jobs = [doc for doc in documents() if doc["kind"] == "Job"]
    shards = next(job for job in jobs if job["spec"].get("completionMode") == "Indexed")
    spec = shards["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (runner,) = pod["containers"]
    command = runner["command"]
    assert command[:2] == ["batchgen", "run"]
    count = int(option(command, "--shards"))
    assert spec["completions"] == count and 1 <= spec["parallelism"] <= count

    # The index: Kubernetes' own annotation, read by batchgen as JOB_COMPLETION_INDEX.
    (index_var,) = [var for var in runner["env"] if var["name"] == "JOB_COMPLETION_INDEX"]
    path = index_var["valueFrom"]["fieldRef"]["fieldPath"]
    assert path == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    last = {"JOB_COMPLETION_INDEX": str(count - 1)}
    assert resolve_shard(None, count, last) == Shard(count - 1, count)

    # A1111 is a native sidecar on the pod's loopback, probed before batchgen starts.
    (a1111,) = pod["initContainers"]
    assert a1111["restartPolicy"] == "Always"
    port = a1111["startupProbe"]["httpGet"]["port"]
    assert a1111["startupProbe"]["httpGet"]["path"].startswith("/sdapi/v1/")
    assert a1111["ports"][0]["containerPort"] == port
    assert str(port) in a1111["args"] and "--api" in a1111["args"]
    assert option(command, "--endpoint") == f"http://127.0.0.1:{port}"

    # The output is on the shared volume that both containers mount.
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    mounts = {m["name"]: m["mountPath"] for m in runner["volumeMounts"]}
    assert mounts == {m["name"]: m["mountPath"] for m in a1111["volumeMounts"]}
    (mount,) = mounts.values()
    out = option(command, "--out")
    assert out.startswith(mount + "/") and command[2].startswith(mount + "/")
    claims = [doc for doc in documents() if doc["kind"] == "PersistentVolumeClaim"]
    assert [c["metadata"]["name"] for c in claims] == [claim]
    assert "ReadWriteMany" in claims[0]["spec"]["accessModes"]

    # The merge Job reads exactly the folders the shards write, on the same claim.
    merge = next(job for job in jobs if job is not shards)["spec"]["template"]["spec"]
    (merger,) = merge["containers"]
    folders = merger["command"][2 : merger["command"].index("--out")]
    assert merger["command"][:2] == ["batchgen", "merge"]
    assert folders == [f"{out}/{Shard(index, count).folder}" for index in range(count)]
    assert merge["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    waiting = merge["initContainers"][0]["command"][-1]
    assert f"for k in {' '.join(str(i) for i in range(count))}; do" in waiting
    assert f"{out}/shard-$k-of-{count}/results.csv" in waiting


def test_the_pod_commands_parse_as_batchgen_commands() -> None:
    for doc in documents():
        if doc["kind"] != "Job":
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            name, *args = container["command"]
            assert name == "batchgen"
            sub = cli.get_command(cli.make_context("batchgen", list(args)), args[0])
            assert sub is not None, args[0]
            sub.make_context(args[0], args[1:])  # raises on an unknown option
