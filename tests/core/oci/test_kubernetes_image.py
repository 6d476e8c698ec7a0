"""`vmm serve --emit kubernetes --k8s-model-image REF`: the artifact as an image volume,
validated against the published Kubernetes 1.33 schema (the first with the beta ImageVolume)."""

from __future__ import annotations

import kubernetes_validate
import yaml

import builders as b
from conftest import assert_error_line, run_vmm

QWEN = "Qwen/Qwen2-7B-Instruct"
IMAGE = "registry.example.com/models/qwen2:main"


def _emit(root, *extra):
    return run_vmm("--root", root, "serve", QWEN, "--emit", "kubernetes", "--gpus", "1", "--gpu-memory", "80GiB", *extra)


def test_model_image_mounts_the_artifact_at_the_model_dir_instead_of_the_pvc(root):
    model_dir = b.make_model(root, QWEN, cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    run = _emit(root, "--k8s-model-image", IMAGE)
    assert run.exit_code == 0, run.stderr
    assert "image volume" in run.stdout and "1.33" in run.stdout
    docs = [d for d in yaml.safe_load_all(run.stdout) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.33.0", strict=True)
    pod = deployment["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models == {"name": "models", "image": {"reference": IMAGE, "pullPolicy": "IfNotPresent"}}
    assert "persistentVolumeClaim" not in str(pod) and "initContainers" not in pod
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["models"]["mountPath"] == str(model_dir) and mounts["models"]["readOnly"] is True
    assert str(model_dir) in pod["containers"][0]["args"]
    # Without the option: the PVC, as before.
    plain = [d for d in yaml.safe_load_all(_emit(root).stdout) if d]
    assert "persistentVolumeClaim" in str(next(d for d in plain if d["kind"] == "Deployment"))


def test_model_image_is_a_registry_reference_and_needs_no_fill_job(root):
    b.make_model(root, QWEN, cfg=b.QWEN2_7B_INSTRUCT, shards=4)
    assert_error_line(_emit(root, "--k8s-model-image", f"oci://{IMAGE}"), 2, "oci://")
    assert_error_line(_emit(root, "--k8s-model-image", "qwen2"), 2, "registry reference")
    run = run_vmm("--root", root, "serve", QWEN, "--emit", "kubernetes-pull", "--gpus", "1", "--gpu-memory", "80GiB",
                  "--k8s-model-image", IMAGE)
    assert_error_line(run, 2, "no fill Job")
