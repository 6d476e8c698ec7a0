"""`vmm serve --emit ome|kserve`: the plan as the operators' resources, validated against their CRDs.

The CRD schemas are the projects' own (tests/data, SOURCES-k8s.md), validated strictly: a
field the CRD does not define fails, as `kubectl apply --validate=strict` would. The
containers inside are validated as Kubernetes containers (kubernetes-validate), and the
readiness check's script is run here against the root.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import vmm
from conftest import REPO, assert_error_line, run_vmm
from k8s_emit import QWEN, by_kind, emit, make_models
from vmm.core.serving import operators
from vmm.core.store import manifests

DATA = REPO / "tests" / "data"
PLAN = ("--gpus", "2", "--gpu-memory", "24GiB")
SCHEMAS = {
    ("ome.io/v1beta1", "BaseModel"): "ome-17b77ed-basemodel-schema.json",
    ("ome.io/v1beta1", "ServingRuntime"): "ome-17b77ed-servingruntime-schema.json",
    ("ome.io/v1beta1", "InferenceService"): "ome-17b77ed-inferenceservice-schema.json",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "kserve-aaac4e2-servingruntime-schema.json",
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-aaac4e2-inferenceservice-schema.json",
}


@pytest.fixture
def models(root):
    return make_models(root)


def _strict(node):
    """No field beyond those the CRD defines (the API server would prune them silently)."""
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


_VALIDATORS: dict[str, jsonschema.Draft202012Validator] = {}


def validator(doc: dict) -> jsonschema.Draft202012Validator:
    name = SCHEMAS[(doc["apiVersion"], doc["kind"])]
    if name not in _VALIDATORS:
        schema = _strict(json.loads((DATA / name).read_text()))
        _VALIDATORS[name] = jsonschema.Draft202012Validator(schema)
    return _VALIDATORS[name]


def crd_errors(doc: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(doc).iter_errors(doc)]


def as_pod(containers: list[dict], init: list[dict], volumes: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": containers, "initContainers": init, "volumes": volumes}}


def digest(root: Path) -> str:
    return run_vmm("check", QWEN, "--fast", "--json").json()["manifest_digest"]


# --------------------------------------------------------------------------- OME

def test_ome_resources_validate_against_omes_crds(models):
    docs = emit(QWEN, *PLAN, "--emit", "ome")
    assert [d["kind"] for d in docs] == ["BaseModel", "ServingRuntime", "InferenceService"]
    for doc in docs:
        assert crd_errors(doc) == [], doc["kind"]
    model, runtime, isvc = docs
    engine = runtime["spec"]["engineConfig"]
    kubernetes_validate.validate(as_pod([engine["runner"]], engine["initContainers"], engine["volumes"]),
                                 "1.33.0", strict=True)
    assert model["spec"]["storage"]["storageUri"] == "pvc://vmm-models/Qwen--Qwen2-7B-Instruct"
    assert model["spec"]["modelArchitecture"] == "Qwen2ForCausalLM"
    assert model["spec"]["modelFormat"] == {"name": "safetensors"}
    assert runtime["spec"]["supportedModelFormats"][0]["modelArchitecture"] == "Qwen2ForCausalLM"
    assert isvc["spec"]["model"] == {"name": model["metadata"]["name"], "kind": "BaseModel"}
    assert isvc["spec"]["runtime"] == {"name": runtime["metadata"]["name"], "kind": "ServingRuntime"}
    runner = engine["runner"]
    # The model is where OME mounts it ($(MODEL_PATH), expanded by Kubernetes from the env OME sets).
    assert runner["args"][0] == "$(MODEL_PATH)" and runner["command"] == ["vllm", "serve"]
    tp = run_vmm("serve", QWEN, *PLAN, "--dry-run", "--json").json()["tensor_parallel_size"]
    assert runner["resources"]["limits"]["nvidia.com/gpu"] == str(tp)


def test_ome_takes_a_node_directory_as_local_storage(models):
    docs = by_kind(emit(QWEN, *PLAN, "--emit", "ome", "--k8s-volume", "hostpath"))
    assert docs["BaseModel"]["spec"]["storage"]["storageUri"] == f"local://{models / 'Qwen--Qwen2-7B-Instruct'}"
    assert crd_errors(docs["BaseModel"]) == []


# --------------------------------------------------------------------------- KServe

def test_kserve_resources_validate_against_kserves_crds(models):
    docs = emit(QWEN, *PLAN, "--emit", "kserve")
    assert [d["kind"] for d in docs] == ["ServingRuntime", "InferenceService"]
    for doc in docs:
        assert crd_errors(doc) == [], doc["kind"]
    runtime, isvc = docs
    predictor = isvc["spec"]["predictor"]
    [container] = runtime["spec"]["containers"]
    kubernetes_validate.validate(as_pod([container], predictor["initContainers"],
                                        runtime["spec"]["volumes"] + predictor["volumes"]), "1.33.0", strict=True)
    assert container["name"] == "kserve-container" and container["args"][0] == "/mnt/models"
    assert predictor["model"]["storageUri"] == "pvc://vmm-models/Qwen--Qwen2-7B-Instruct"
    assert predictor["model"]["runtime"] == runtime["metadata"]["name"]
    assert predictor["model"]["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    assert runtime["spec"]["supportedModelFormats"][0]["autoSelect"] is False


def test_kserve_needs_a_claim(models):
    assert_error_line(run_vmm("serve", QWEN, *PLAN, "--emit", "kserve", "--k8s-volume", "hostpath"), 2,
                      "PersistentVolumeClaim", "--k8s-volume pvc")


def test_the_crd_check_can_fail(models):
    runtime, isvc = emit(QWEN, *PLAN, "--emit", "kserve")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["model"]["storageURI"] = bad["spec"]["predictor"]["model"].pop("storageUri")
    assert any("storageURI" in e for e in crd_errors(bad))
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormats"][0]["autoSelect"] = "no"
    assert any("'no' is not of type 'boolean'" in e for e in crd_errors(bad))
    model = emit(QWEN, *PLAN, "--emit", "ome")[0]
    del model["spec"]["storage"]
    assert any("'storage' is a required property" in e for e in crd_errors(model))


# --------------------------------------------------------------------------- readiness: the manifest digest

@pytest.mark.parametrize("operator", ["ome", "kserve"])
def test_every_resource_carries_the_digest_and_the_pod_checks_it(models, operator):
    expected = digest(models)
    assert expected.startswith("sha256:")
    docs = emit(QWEN, *PLAN, "--emit", operator)
    assert {d["metadata"]["annotations"]["vmm/manifest-digest"] for d in docs} == {expected}
    text = yaml.safe_dump_all(docs)
    assert "pip install" not in text and vmm.IMAGE in text
    init = (by_kind(docs)["ServingRuntime"]["spec"]["engineConfig"]["initContainers"] if operator == "ome"
            else by_kind(docs)["InferenceService"]["spec"]["predictor"]["initContainers"])
    [check] = init
    assert check["command"][2].endswith(f"--manifest-digest {expected}")


def _run(container: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ["HOME"],
           **{e["name"]: e["value"] for e in container["env"] if "value" in e}, "VMM_STATE_DIR": str(tmp_path / "st")}
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_the_readiness_check_passes_on_the_plans_files_and_fails_on_others(models, tmp_path):
    isvc = by_kind(emit(QWEN, *PLAN, "--emit", "kserve"))["InferenceService"]
    [check] = isvc["spec"]["predictor"]["initContainers"]
    ok = _run(check, tmp_path)
    assert ok.returncode == 0, ok.stderr
    # The volume now holds another commit of the model (same sizes, so --fast alone would pass).
    model_dir = models / "Qwen--Qwen2-7B-Instruct"
    manifest = manifests.read_manifest(model_dir)
    manifest.commit = "f" * 40
    manifests.write_manifest(model_dir, manifest)
    other = _run(check, tmp_path)
    assert other.returncode == 5, other.stderr
    assert "manifest digest" in other.stderr and "not the" in other.stderr


def test_check_manifest_digest_flag(models):
    expected = digest(models)
    run = run_vmm("check", QWEN, "--fast", "--manifest-digest", expected, "--json")
    assert run.exit_code == 0, run.stderr
    assert [c["status"] for c in run.json()["checks"] if c["name"] == "manifest digest"] == ["pass"]
    assert_error_line(run_vmm("check", QWEN, "--fast", "--manifest-digest", "sha256:" + "0" * 64), 5,
                      "manifest digest", "sha256:" + "0" * 64)
    assert_error_line(run_vmm("check", "my-finetune", "--fast", "--manifest-digest", expected), 5,
                      "manifest digest", "no manifest")


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("operator", ["ome", "kserve"])
def test_a_hand_made_directory_has_no_digest_to_check(models, operator):
    assert_error_line(run_vmm("serve", "my-finetune", *PLAN, "--emit", operator), 2,
                      "need a model vmm pulled", "my-finetune")


@pytest.mark.parametrize("operator", ["ome", "kserve"])
def test_multi_node_and_cpu_plans_are_refused(models, operator):
    assert_error_line(run_vmm("serve", QWEN, "--gpus", "1", "--gpu-memory", "16GiB", "--nodes", "2",
                              "--emit", operator), 2, "one node", "--emit kubernetes --nodes N")
    assert_error_line(run_vmm("serve", QWEN, "--device", "cpu", "--gpu-memory", "64GiB", "--emit", operator), 2,
                      "plans for GPUs")


def test_a_gguf_file_moves_with_the_model_folder(tmp_path):
    from vmm.core.serving import kubernetes

    plan = kubernetes.K8sPlan(argv=["vllm", "serve", "/m/org--x/x-Q4_K_M.gguf", "--chat-template",
                                    "/m/org--x/chat_template.jinja", "--tokenizer", "org/base", "--x", "$(Y)"],
                              env={}, vmm_name="org/x", served_name="org/x", model_dir=Path("/m/org--x"),
                              root=Path("/m"), gpus_per_node=1, nodes=1, weight_bytes=1, vllm_version=None,
                              commit=None)
    argv, _port = operators.operator_argv(plan, "/mnt/models")
    assert argv[2] == "/mnt/models/x-Q4_K_M.gguf"
    assert argv[argv.index("--chat-template") + 1] == "/mnt/models/chat_template.jinja"
    assert argv[argv.index("--tokenizer") + 1] == "org/base"
    assert "$$(Y)" in argv                  # Kubernetes does not expand the plan's own words


def test_an_image_volume_is_refused_for_operator_outputs(root):
    """--k8s-model-image mounts an OCI artifact in a plain Deployment only; an operator output
    would silently ignore it, so it is one error line instead."""
    import builders as b
    from conftest import assert_error_line, run_vmm

    b.make_model(root, "Qwen/Qwen2-7B-Instruct", cfg=b.QWEN2_7B_INSTRUCT, shards=2)
    for emit in ("ome", "kserve"):
        assert_error_line(run_vmm("serve", "Qwen/Qwen2-7B-Instruct", "--gpus", "1", "--gpu-memory", "80GiB",
                                  "--emit", emit, "--k8s-model-image", "reg.example/m:1"),
                          2, "--k8s-model-image")
