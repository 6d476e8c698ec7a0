"""`vmm serve --emit docker|systemd|kubernetes|kubernetes-pull|ome|kserve`: one plan, parsed and validated
(the operators' own checks: test_operators.py).

Kubernetes output is parsed with PyYAML and validated against the published Kubernetes API
schemas (kubernetes-validate, strict: unknown fields fail) and the LeaderWorkerSet CRD's own
schema (tests/data, see SOURCES-k8s.md); no cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import builders as b
from conftest import REPO, assert_error_line, run_vmm
from k8s_emit import QWEN, by_kind, emit, make_models
import vmm
from vmm.core.errors import UsageError
from vmm.core.serving import deploy, kubernetes, multinode

K8S_VERSION = "1.33.0"
LWS_SCHEMA = REPO / "tests" / "data" / "lws-83ba21e-openapi-schema.yaml"
ONE_NODE = ("--gpus", "2", "--gpu-memory", "24GiB")
TWO_NODES = ("--gpus", "1", "--gpu-memory", "16GiB", "--nodes", "2")

ARGV = ["vllm", "serve", "/models/org--m", "--served-model-name", "org/m", "--host", "127.0.0.1",
        "--port", "8123", "--tensor-parallel-size", "2", "--chat-template", "/models/org--m/a b.jinja"]


@pytest.fixture
def models(root):
    return make_models(root)


def validate(doc: dict) -> None:
    """Strict: an unknown or misspelt field fails, as `kubectl apply --validate=strict` would."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def as_pod(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata", {"name": "p"}),
            "spec": template["spec"]}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# --------------------------------------------------------------------------- docker / systemd

def test_emit_docker_runs_the_same_plan_in_the_official_image(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    text = deploy.emit_docker(ARGV, Path("/models"), Path("/models/org--m"), vllm_version="0.33.0",
                              env={"HF_HUB_OFFLINE": "1", "NCCL_SOCKET_IFNAME": "eth1"})
    words = shlex.split(text.replace("\\\n", " "))
    assert words[:3] == ["docker", "run", "-d"]
    assert words[words.index("-v") + 1] == "/models:/models:ro"
    assert words[words.index("--gpus") + 1] == '"device=0,1"'
    assert words[words.index("-p") + 1] == "8123:8123"
    envs = [words[i + 1] for i, w in enumerate(words) if w == "-e"]
    assert sorted(envs) == ["HF_HUB_OFFLINE=1", "NCCL_SOCKET_IFNAME=eth1", "VLLM_NO_USAGE_STATS=1"]  # no duplicates
    image = words.index("vllm/vllm-openai:v0.33.0")
    rest = words[image + 1:]
    assert rest[:2] == ["--model", "/models/org--m"]
    assert rest[rest.index("--host") + 1] == "0.0.0.0"
    assert rest[rest.index("--tensor-parallel-size") + 1] == "2"
    assert rest[rest.index("--chat-template") + 1] == "/models/org--m/a b.jinja"


def _systemd_words(value: str) -> list[str]:
    # systemd's quoting for these simple cases matches POSIX shell double quotes.
    return shlex.split(value.replace("%%", "%").replace("$$", "$"))


def test_emit_systemd_unit_restarts_and_stops_gracefully():
    text = deploy.emit_systemd(ARGV + ["--x", "50%"], "org/m", Path("/models"), vllm_path="/opt/v/bin/vllm")
    lines = text.splitlines()
    assert lines[0] == "[Unit]" and "[Service]" in lines and "[Install]" in lines
    fields = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("Environment"))
    assert fields["Restart"] == "on-failure" and fields["KillSignal"] == "SIGTERM"
    assert "50%%" in fields["ExecStart"]
    words = _systemd_words(fields["ExecStart"])
    assert words[0] == "/opt/v/bin/vllm" and words[1:] == ARGV[1:] + ["--x", "50%"]
    assert "Environment=VLLM_NO_USAGE_STATS=1" in lines


# --------------------------------------------------------------------------- one plan, four outputs

def _without_host(argv: list[str]) -> list[str]:
    i = argv.index("--host")
    return argv[:i] + argv[i + 2:]


def vllm_argvs(root: Path, *plan: str) -> dict[str, list[str]]:
    """The vllm serve argv each output would run (six on one node, four across nodes), for the same NAME and flags.

    The port is given: without it, serve on this host takes the next free one when 8000 is
    busy here, while Kubernetes pods always listen on 8000 (their own network)."""
    plan = (*plan, "--port", "8000")
    serve = run_vmm("serve", QWEN, *plan, "--dry-run", "--json").json()["command"]
    docker = shlex.split(run_vmm("serve", QWEN, *plan, "--emit", "docker").stdout.replace("\\\n", " "))
    after = docker[[i for i, w in enumerate(docker) if w.startswith("vllm/vllm-openai:")][0] + 1:]
    assert after[0] == "--model"
    docker_argv = ["vllm", "serve", after[1], *after[2:]]
    unit = run_vmm("serve", QWEN, *plan, "--emit", "systemd").stdout
    [exec_start] = [ln.split("=", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart=")]
    systemd = _systemd_words(exec_start)
    workload = by_kind(emit(QWEN, *plan, "--emit", "kubernetes"))
    if "Deployment" in workload:
        [container] = workload["Deployment"]["spec"]["template"]["spec"]["containers"]
        k8s = container["command"] + container["args"]
    else:
        leader = workload["LeaderWorkerSet"]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        k8s = leader["spec"]["containers"][0]["args"]
    argvs = {"serve": serve, "docker": docker_argv, "systemd": systemd, "kubernetes": k8s}
    if "--nodes" not in plan:          # the operators' outputs serve on one node
        model_dir = str(root / "Qwen--Qwen2-7B-Instruct")
        ome = by_kind(emit(QWEN, *plan, "--emit", "ome"))["ServingRuntime"]["spec"]["engineConfig"]["runner"]
        [kserve] = by_kind(emit(QWEN, *plan, "--emit", "kserve"))["ServingRuntime"]["spec"]["containers"]
        # Each operator mounts the folder at its own path: the same folder, under another name.
        argvs["ome"] = [w.replace("$(MODEL_PATH)", model_dir) for w in ome["command"] + ome["args"]]
        argvs["kserve"] = [w.replace("/mnt/models", model_dir) for w in kserve["command"] + kserve["args"]]
    return argvs


@pytest.mark.parametrize("plan", [ONE_NODE, TWO_NODES, ("--gpus", "4", "--gpu-memory", "8GiB", "--max-model-len", "4096")])
def test_serve_docker_systemd_kubernetes_ome_and_kserve_run_the_same_vllm_arguments(models, plan):
    argvs = vllm_argvs(models, *plan)
    assert argvs["serve"][:3] == ["vllm", "serve", str(models / "Qwen--Qwen2-7B-Instruct")]
    # Containers listen on every address; everything else is the one plan, word for word.
    assert argvs["docker"][argvs["docker"].index("--host") + 1] == "0.0.0.0"
    assert argvs["kubernetes"][argvs["kubernetes"].index("--host") + 1] == "0.0.0.0"
    reference = _without_host(argvs["serve"])
    assert _without_host(argvs["docker"]) == reference
    assert _without_host(argvs["kubernetes"]) == reference
    for operator in ("ome", "kserve"):
        if operator in argvs:
            assert argvs[operator][argvs[operator].index("--host") + 1] == "0.0.0.0"
            assert _without_host(argvs[operator]) == reference, operator
    assert ("ome" in argvs) == ("--nodes" not in plan)
    assert _without_host(argvs["systemd"])[1:] == reference[1:]       # [0]: the vllm path


def test_the_agreement_check_can_fail(models):
    argvs = vllm_argvs(models, *ONE_NODE)
    changed = vllm_argvs(models, *ONE_NODE, "--max-model-len", "2048")
    assert _without_host(changed["kubernetes"]) != _without_host(argvs["serve"])
    assert _without_host(changed["kserve"]) != _without_host(argvs["serve"])
    assert _without_host(changed["ome"]) != _without_host(argvs["serve"])


# --------------------------------------------------------------------------- kubernetes: one node

def test_one_node_manifests_validate_against_the_kubernetes_schemas(models):
    docs = emit(QWEN, *ONE_NODE, "--emit", "kubernetes")
    assert [d["kind"] for d in docs] == ["Service", "Deployment"]
    for doc in docs:
        validate(doc)
    service, deployment = docs
    pod = deployment["spec"]["template"]
    validate(as_pod(pod))
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["port"] == 8000


def test_the_serving_container_runs_the_plan_on_the_gpus_it_planned(models):
    plan = run_vmm("serve", QWEN, "--gpus", "2", "--gpu-memory", "12GiB", "--dry-run", "--json").json()
    assert plan["tensor_parallel_size"] == 2
    deployment = by_kind(emit(QWEN, "--gpus", "2", "--gpu-memory", "12GiB", "--emit", "kubernetes"))["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    [vllm] = spec["containers"]
    assert vllm["image"].startswith("vllm/vllm-openai:")
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "2"
    args = vllm["args"]
    assert args[args.index("--served-model-name") + 1] == QWEN
    assert env_of(vllm)["HF_HUB_OFFLINE"] == "1"
    # The models root at the same path, read-only, so every path in the plan stays valid.
    mounts = {m["mountPath"]: m for m in vllm["volumeMounts"]}
    assert mounts[str(models)]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "vmm-models", "readOnly": True}
    # Tensor parallel needs a real /dev/shm: memory-backed, bounded.
    assert mounts["/dev/shm"]["name"] == "dshm"
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "4Gi"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"] == {"path": "/health", "port": 8000}
    # Host memory request: the weights (14.2 GiB) + runtime + /dev/shm, rounded up.
    assert vllm["resources"]["requests"]["memory"] == "27Gi"


def test_startup_budget_grows_with_the_weights(models, root):
    b.make_model(root, "meta-llama/Meta-Llama-3-70B-Instruct",
                 cfg={**b.LLAMA3_8B_INSTRUCT, "num_hidden_layers": 80, "hidden_size": 8192,
                      "intermediate_size": 28672, "num_attention_heads": 64}, shards=8)
    def budget(name: str) -> int:
        vllm = by_kind(emit(name, "--gpus", "8", "--gpu-memory", "80GiB", "--emit", "kubernetes"))[
            "Deployment"]["spec"]["template"]["spec"]["containers"][0]
        probe = vllm["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]
    small, large = budget(QWEN), budget("meta-llama/Meta-Llama-3-70B-Instruct")
    assert small >= kubernetes.STARTUP_BASE_S + 14 * 1024 // 100
    assert large > small + 600        # ~120 GiB more weights at 100 MiB/s


def test_a_half_filled_volume_never_serves(models):
    """The pod's init container runs `vmm check --fast`: a failing check keeps vLLM from starting."""
    spec = by_kind(emit(QWEN, *ONE_NODE, "--emit", "kubernetes"))["Deployment"]["spec"]["template"]["spec"]
    [check] = spec["initContainers"]
    assert check["image"] == vmm.IMAGE == f"ghcr.io/vmm-project/vllm-model-manager:{vmm.__version__}"
    script = check["command"][2]
    assert check["command"][:2] == ["sh", "-c"]
    # The target vLLM the plan was made for (no vLLM here: the bundled parser snapshot's), the
    # same version as the vLLM image's tag.
    [vllm] = spec["containers"]
    target = vllm["image"].split(":v", 1)[1]
    assert script == f'exec vmm check "$VMM_MODEL" --fast --vllm-version {target}'
    env = env_of(check)
    assert env["VMM_MODEL"] == QWEN and env["VMM_ROOT"] == str(models)
    assert env["VMM_STATE_DIR"].startswith("/tmp/")        # the root is mounted read-only
    assert check["volumeMounts"] == [{"name": "models", "mountPath": str(models), "readOnly": True}]


@pytest.mark.parametrize("args", [("--emit", "kubernetes", *ONE_NODE), ("--emit", "kubernetes", *TWO_NODES),
                                  ("--emit", "kubernetes-pull", *ONE_NODE)])
def test_no_manifest_installs_packages_at_pod_start(models, args):
    """vmm runs from its own image (issue 22): a `pip install` at start ran whatever the index
    served under the name, in a pod that holds the Hub token."""
    text = run_vmm("serve", QWEN, *args).stdout
    assert "pip install" not in text and "pip3" not in text and "VMM_PIP_SPEC" not in text
    images = {c["image"] for doc in yaml.safe_load_all(text) if doc for c in _containers(doc)}
    assert vmm.IMAGE in images
    assert all(i == vmm.IMAGE or i.startswith("vllm/vllm-openai:v") for i in images), images


def _containers(doc: dict) -> list[dict]:
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers"):
                found += value
            else:
                found += _containers(value)
    elif isinstance(doc, list):
        for item in doc:
            found += _containers(item)
    return found


def test_the_vllm_image_is_the_installed_vllm_when_there_is_one(models, monkeypatch):
    from vmm.core.serving import vllm_env

    monkeypatch.setattr(vllm_env, "find_vllm",
                        lambda: vllm_env.VllmInstall("/opt/vllm/bin/vllm", "/opt/vllm/bin/python", "0.32.0", "vllm", False))
    spec = by_kind(emit(QWEN, *ONE_NODE, "--emit", "kubernetes"))["Deployment"]["spec"]["template"]["spec"]
    assert spec["containers"][0]["image"] == "vllm/vllm-openai:v0.32.0"
    assert spec["initContainers"][0]["command"][2].endswith("--vllm-version 0.32.0")


def test_hostpath_volume_and_other_image(models):
    docs = emit(QWEN, *ONE_NODE, "--emit", "kubernetes", "--k8s-volume", "hostpath",
                "--k8s-vmm-image", "registry.example/vmm:0.1")
    for doc in docs:
        validate(doc)
    spec = by_kind(docs)["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["hostPath"] == {"path": str(models), "type": "Directory"}
    assert spec["initContainers"][0]["image"] == "registry.example/vmm:0.1"


def test_claim_name_flag(models):
    spec = by_kind(emit(QWEN, *ONE_NODE, "--emit", "kubernetes", "--k8s-claim", "llm-weights"))[
        "Deployment"]["spec"]["template"]["spec"]
    assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "llm-weights"


def test_the_schema_check_can_fail(models):
    deployment = by_kind(emit(QWEN, *ONE_NODE, "--emit", "kubernetes"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deployment)


# --------------------------------------------------------------------------- kubernetes: N nodes

def lws_validator() -> jsonschema.Draft7Validator:
    schema = yaml.safe_load(LWS_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema)


def test_two_nodes_make_a_leader_worker_set_that_validates_against_its_crd(models):
    docs = emit(QWEN, *TWO_NODES, "--emit", "kubernetes")
    assert [d["kind"] for d in docs] == ["Service", "LeaderWorkerSet"]
    service, lws = docs
    validate(service)
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    errors = list(lws_validator().iter_errors(lws))
    assert errors == [], [e.message for e in errors]
    template = lws["spec"]["leaderWorkerTemplate"]
    assert template["size"] == 2 and template["restartPolicy"] == "RecreateGroupOnPodRestart"
    for role in ("leaderTemplate", "workerTemplate"):
        validate(as_pod(template[role]))        # the pod templates are plain PodSpecs
    assert service["spec"]["selector"] == {"leaderworkerset.sigs.k8s.io/name": lws["metadata"]["name"],
                                           "role": "leader"}


def test_leader_starts_the_ray_head_then_the_plan_and_workers_join(models):
    lws = by_kind(emit(QWEN, *TWO_NODES, "--emit", "kubernetes"))["LeaderWorkerSet"]
    template = lws["spec"]["leaderWorkerTemplate"]
    [leader] = template["leaderTemplate"]["spec"]["containers"]
    [worker] = template["workerTemplate"]["spec"]["containers"]
    assert leader["command"][:2] == ["sh", "-c"]
    assert "multi-node-serving.sh leader --ray_cluster_size=$(LWS_GROUP_SIZE) && exec \"$0\" \"$@\"" \
        in leader["command"][2]
    args = leader["args"]
    assert args[:2] == ["vllm", "serve"]
    assert args[args.index("--pipeline-parallel-size") + 1] == "2"
    assert args[args.index("--distributed-executor-backend") + 1] == "ray"
    assert "multi-node-serving.sh worker --ray_address=$(LWS_LEADER_ADDRESS)" in worker["command"][2]
    assert "startupProbe" in leader and "startupProbe" not in worker and "args" not in worker
    for c in (leader, worker):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert c["image"] == leader["image"]
    for role in ("leaderTemplate", "workerTemplate"):
        assert template[role]["spec"]["initContainers"][0]["name"] == "vmm-check"


def test_the_crd_check_can_fail(models):
    lws = by_kind(emit(QWEN, *TWO_NODES, "--emit", "kubernetes"))["LeaderWorkerSet"]
    lws["spec"]["leaderWorkerTemplate"]["size"] = "two"
    lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    messages = [e.message for e in lws_validator().iter_errors(lws)]
    assert any("'two' is not of type 'integer'" in m for m in messages), messages
    assert any("Sometimes" in m for m in messages), messages


def test_interface_variables_reach_every_container(models, monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "eth1")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth1")
    template = by_kind(emit(QWEN, *TWO_NODES, "--emit", "kubernetes"))["LeaderWorkerSet"]["spec"][
        "leaderWorkerTemplate"]
    for role in ("leaderTemplate", "workerTemplate"):
        env = env_of(template[role]["spec"]["containers"][0])
        assert env["NCCL_SOCKET_IFNAME"] == "eth1" and env["GLOO_SOCKET_IFNAME"] == "eth1"


def test_dollar_parens_in_an_argument_are_not_expanded_by_kubernetes(models):
    deployment = by_kind(emit(QWEN, *ONE_NODE, "--emit", "kubernetes", "--", "--api-key", "a$(B)c"))["Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--api-key") + 1] == "a$$(B)c"


# --------------------------------------------------------------------------- the pull Job

def test_pull_job_fills_the_volume_with_the_pinned_commit_and_checks_it(models):
    [job] = emit(QWEN, *ONE_NODE, "--emit", "kubernetes-pull")
    validate(job)
    assert job["kind"] == "Job"
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    script = container["command"][2]
    assert 'vmm pull "$VMM_MODEL" --revision 0123456789abcdef0123456789abcdef01234567 && exec vmm check "$VMM_MODEL"' \
        in script
    assert container["volumeMounts"] == [{"name": "models", "mountPath": str(models)}]     # writable
    assert spec["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "vmm-models"}}]
    # vmm's image runs as a non-root user: the claim's files are made its group's.
    assert spec["securityContext"]["fsGroup"] == kubernetes.VMM_IMAGE_UID
    token = [e for e in container["env"] if e["name"] == "HF_TOKEN"][0]
    assert token["valueFrom"]["secretKeyRef"]["optional"] is True


def test_pull_job_needs_a_pulled_model(models):
    assert_error_line(run_vmm("serve", "my-finetune", *ONE_NODE, "--emit", "kubernetes-pull"), 2,
                      "needs a model vmm pulled", "my-finetune")


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("args, fragment", [
    (("--emit", "kubernetes", "--k8s-volume", "nfs"), "unknown --k8s-volume"),
    (("--emit", "kubernetes", "--k8s-claim", "Bad_Claim"), "not a valid claim name"),
    (("--emit", "helm"), "unknown --emit"),
])
def test_bad_kubernetes_options_get_one_error_line(models, args, fragment):
    assert_error_line(run_vmm("serve", QWEN, *ONE_NODE, *args), 2, fragment)


def test_a_cpu_plan_is_refused_for_kubernetes(models):
    assert_error_line(run_vmm("serve", QWEN, "--device", "cpu", "--gpu-memory", "64GiB", "--emit", "kubernetes"),
                      2, "plans for GPUs", "--gpus N --gpu-memory SIZE")


def test_object_names_are_dns_labels():
    assert kubernetes.object_name(Path("/m/Qwen--Qwen2.5-7B-Instruct")) == "vllm-qwen-qwen2-5-7b-instruct"
    long = kubernetes.object_name(Path("/m/" + "x" * 100))
    assert len(long) <= 45 and long.startswith("vllm-x")
    assert kubernetes.object_name(Path("/m/a"), "chat-prod") == "chat-prod"
    with pytest.raises(UsageError):
        kubernetes.object_name(Path("/m/a"), "Chat_Prod")


# --------------------------------------------------------------------------- multi-node preflight

def test_manifest_digest_is_stable_across_hosts_and_changes_with_the_files(tmp_path):
    one = b.make_model(tmp_path / "a", QWEN, cfg=b.QWEN2_7B_INSTRUCT, shards=2)
    two = b.make_model(tmp_path / "b", QWEN, cfg=b.QWEN2_7B_INSTRUCT, shards=2)
    from vmm.core.store import manifests

    m1, m2 = manifests.read_manifest(one), manifests.read_manifest(two)
    m2.files.reverse()
    m2.pulled_at, m2.use_counts = 1.0, {"serve": 3}          # not part of the files
    assert multinode.manifest_digest(m1) == multinode.manifest_digest(m2)
    assert multinode.manifest_digest(m1).startswith("sha256:")
    m2.files[0].size += 1
    assert multinode.manifest_digest(m1) != multinode.manifest_digest(m2)
    m2.files[0].size -= 1
    m2.commit = "f" * 40
    assert multinode.manifest_digest(m1) != multinode.manifest_digest(m2)
    assert multinode.manifest_digest(None) is None


def test_check_json_and_the_dry_run_carry_the_same_digest(models, monkeypatch):
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    check = run_vmm("check", QWEN, "--fast", "--json")
    doc = json.loads(check.stdout)
    assert doc["manifest_digest"].startswith("sha256:") and doc["commit"] == "0123456789abcdef0123456789abcdef01234567"
    plan = run_vmm("serve", QWEN, *TWO_NODES, "--dry-run", "--json").json()
    same = plan["identical_on_every_node"]
    assert same["manifest_digest"] == doc["manifest_digest"]
    assert same["model_path"] == plan["command"][2] and same["nodes"] == 2
    assert same["env"] == {"NCCL_SOCKET_IFNAME": "ib0", "GLOO_SOCKET_IFNAME": None}
    assert plan["env"]["NCCL_SOCKET_IFNAME"] == "ib0"
    text = run_vmm("serve", QWEN, *TWO_NODES, "--dry-run").stdout
    assert f"same on every node: manifest digest {doc['manifest_digest']}" in text
    assert "same on every node: GLOO_SOCKET_IFNAME unset" in text
    single = run_vmm("serve", QWEN, *ONE_NODE, "--dry-run", "--json").json()
    assert single["identical_on_every_node"] is None


def test_hand_made_directory_has_no_digest(models):
    doc = json.loads(run_vmm("check", "my-finetune", "--fast", "--json").stdout)
    assert doc["manifest_digest"] is None and doc["commit"] is None


# --------------------------------------------------------------------------- the scripts, run for real

def _run_container(container: dict, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a container's ``sh -c`` command here, with its env: vmm is on PATH (no pip install)."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ["HOME"],
           **env_of(container), **extra_env}
    env = {k: v for k, v in env.items() if v is not None}
    assert container["command"][:2] == ["sh", "-c"]
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_pull_job_then_init_check_on_an_empty_volume_and_a_damaged_one(root, tmp_path):
    """The Job's script fills an empty root from the (local) Hub; the init container's script
    passes on it and fails (exit 5) once a shard is truncated: a half-filled volume never serves."""
    from hubserver import HubServer

    source = b.make_safetensors_model(tmp_path / "src", cfg=b.TINY_LLAMA, sparse=False)
    with HubServer() as hub:
        hub.add_repo("org/tiny", source)
        hub_env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "VMM_STATE_DIR": str(tmp_path / "st")}
        assert run_vmm("pull", "org/tiny", env={"HF_ENDPOINT": hub.url}).exit_code == 0
        [job] = emit("org/tiny", "--gpus", "1", "--gpu-memory", "16GiB", "--emit", "kubernetes-pull")
        deployment = by_kind(emit("org/tiny", "--gpus", "1", "--gpu-memory", "16GiB", "--emit", "kubernetes"))[
            "Deployment"]
        shutil.rmtree(root / "org--tiny")                 # the cluster's volume starts empty
        pulled = _run_container(job["spec"]["template"]["spec"]["containers"][0], hub_env)
        assert pulled.returncode == 0, pulled.stderr
        assert (root / "org--tiny" / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    [check] = deployment["spec"]["template"]["spec"]["initContainers"]
    ok = _run_container(check, {"VMM_STATE_DIR": str(tmp_path / "st2")})
    assert ok.returncode == 0, ok.stderr
    with open(root / "org--tiny" / "model.safetensors", "r+b") as handle:
        handle.truncate(100)
    damaged = _run_container(check, {"VMM_STATE_DIR": str(tmp_path / "st2")})
    assert damaged.returncode == 5, damaged.stderr
    assert "model.safetensors" in damaged.stderr


def test_docs_show_the_real_output(tmp_path, monkeypatch):
    """docs/kubernetes.md's YAML is what the emitter prints for the demo root (vLLM 0.32.0)."""
    import re

    from vmm.core.serving import vllm_env

    demo = b.make_demo_root(tmp_path / "demo")
    monkeypatch.setenv("VMM_ROOT", str(demo))
    monkeypatch.setattr(vllm_env, "find_vllm",
                        lambda: vllm_env.VllmInstall("/opt/vllm/bin/vllm", "/opt/vllm/bin/python", "0.32.0", "vllm", False))
    text = (REPO / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"<!-- emit: (.*?) -->\n```yaml\n(.*?)```", text, re.S)
    assert len(blocks) == 5
    for args, shown in blocks:
        run = run_vmm("serve", *shlex.split(args))
        assert run.exit_code == 0, run.stderr
        assert run.stdout.replace(str(demo), "/tmp/demo/models") == shown, f"regenerate the block for: {args}"


def test_kubernetes_manifests_ignore_this_hosts_gpu_placement_and_ports(models, tmp_path, monkeypatch):
    """The device plugin hands a pod its GPUs and the pod has its own network: neither this
    host's GPU choice (CUDA_VISIBLE_DEVICES, a utilization sized to a shared GPU) nor a port
    taken here may leak into the manifests, while `serve --dry-run` on this host uses them."""
    import socket

    import fakegpu
    from vmm.core.serving import gpu

    # GPU 0 almost full, GPU 1 free: placement on this host picks GPU 1.
    fakegpu.install(tmp_path / "bin", [(0, *fakegpu.H100[:2], 2000, "9.0"), (1, *fakegpu.H100[:2], 80000, "9.0")])
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(gpu, "_from_nvml", lambda: None)
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 8000))
    except OSError:
        busy.close()
        busy = None          # already taken by someone else: just as good
    try:
        local = run_vmm("serve", QWEN, "--dry-run", "--json")
        assert local.exit_code == 0, local.stderr
        assert local.json()["env"]["CUDA_VISIBLE_DEVICES"] == "1" and local.json()["port"] != 8000
        docs = emit(QWEN, "--emit", "kubernetes")
    finally:
        if busy is not None:
            busy.close()
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm")
    names = {e["name"] for e in container.get("env", [])}
    assert not names & {"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"}
    argv = container.get("command", []) + container.get("args", [])
    assert argv[argv.index("--port") + 1] == "8000"
