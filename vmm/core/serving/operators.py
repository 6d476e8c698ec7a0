"""The same serve plan for the Kubernetes operators that keep models on nodes: OME and KServe.

Neither operator computes vLLM's arguments (their shipped runtimes hard-code flags per model:
sgl-project/ome ``config/runtimes/vllm/*.yaml``, kserve/kserve
``config/runtimes/kserve-vllmserver.yaml``), so vmm hands them its plan: the verified folder
as the operator's model storage, the computed ``vllm serve`` argv in the runtime's container,
and a ``vmm check --fast --manifest-digest D`` init container, so a pod serves only the very
files the plan was made from (D: :func:`vmm.core.serving.multinode.manifest_digest`).

- OME (``ome.io/v1beta1``, sgl-project/ome at 17b77ed): a ``BaseModel`` whose
  ``spec.storage.storageUri`` is ``pvc://<claim>/<model dir>`` (OEP-0004, PVC storage; for a
  BaseModel the claim is in its namespace) or ``local://<model dir>`` for a node directory
  (``pkg/utils/storage/storage.go`` ``LocalStoragePrefix``), a ``ServingRuntime`` whose
  ``engineConfig.runner`` runs the plan with the model at ``$(MODEL_PATH)`` (the variable the
  controller sets: ``pkg/constants`` ``ModelPathEnvVarKey``), and an ``InferenceService``
  naming both.
- KServe (``serving.kserve.io``, kserve/kserve at aaac4e2): a ``ServingRuntime``
  (``v1alpha1``) whose ``kserve-container`` runs the plan with the model at ``/mnt/models``
  (``pkg/constants/constants.go`` ``DefaultModelLocalMountPath``), and an ``InferenceService``
  (``v1beta1``) whose predictor's ``storageUri`` is ``pvc://<claim>/<model dir>``
  (``PvcURIPrefix``; KServe mounts the claim's sub-path there).

Schemas: tests/data (SOURCES-k8s.md); docs/kubernetes.md has a section per operator.
"""

from __future__ import annotations

from pathlib import Path

from vmm import __version__
from vmm.core.errors import UsageError
from vmm.core.serving import kubernetes, multinode

OME_API = "ome.io/v1beta1"
KSERVE_API = "serving.kserve.io/v1beta1"
KSERVE_RUNTIME_API = "serving.kserve.io/v1alpha1"
KSERVE_MODEL_DIR = "/mnt/models"
OME_MODEL_DIR = "$(MODEL_PATH)"
KSERVE_MODEL_FORMAT = "vmm-vllm"     # matches only the runtime vmm prints (autoSelect off)
OPERATORS = ("ome", "kserve")


def _relative_dir(plan: kubernetes.K8sPlan) -> str:
    try:
        return plan.model_dir.relative_to(plan.root).as_posix()
    except ValueError:
        raise UsageError("the model is not under the models root", str(plan.model_dir),
                         "serve a model from the root the volume holds (--root)") from None


def operator_argv(plan: kubernetes.K8sPlan, model_dir: str) -> tuple[list[str], int]:
    """The plan's argv listening on every address, with the model folder at ``model_dir`` (where
    the operator mounts it): every word under the folder moves with it (a GGUF file, a template)."""
    argv, port = kubernetes.serving_args(plan.argv)
    base = str(plan.model_dir)
    moved = []
    for word in argv:
        word = kubernetes._escape(word)
        if word == base or word.startswith(base + "/"):
            word = model_dir + word[len(base):]
        moved.append(word)
    return moved, port


def digest_of(plan: kubernetes.K8sPlan) -> str:
    from vmm.core.store import manifests

    digest = multinode.manifest_digest(manifests.read_manifest(plan.model_dir))
    if digest is None:
        raise UsageError("operator outputs need a model vmm pulled", plan.vmm_name,
                         "it has no manifest, so no digest for the pods to check; `vmm pull` or `vmm import` it")
    return digest


def readiness_check(plan: kubernetes.K8sPlan, opts: kubernetes.K8sOptions, digest: str) -> dict:
    """``vmm check --fast`` (as for --emit kubernetes) that also fails unless the volume holds
    the manifest the plan was made from."""
    container = kubernetes.check_container(plan, opts)
    container["command"] = [*container["command"][:2], container["command"][2] + f" --manifest-digest {digest}"]
    return container


def _annotations(plan: kubernetes.K8sPlan, digest: str) -> dict[str, str]:
    return {"vmm/model": plan.served_name, **({"vmm/commit": plan.commit} if plan.commit else {}),
            "vmm/manifest-digest": digest}


def _metadata(name: str, plan: kubernetes.K8sPlan, digest: str) -> dict:
    meta = kubernetes._metadata(name, plan)
    meta["annotations"] = _annotations(plan, digest)
    return meta


def _runtime_container(plan: kubernetes.K8sPlan, name: str, model_dir: str) -> dict:
    argv, port = operator_argv(plan, model_dir)
    container = kubernetes.vllm_container(plan, name, argv[:2], argv[2:], port)
    # The operator mounts the model; only /dev/shm is ours.
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] == "dshm"]
    return container


def _check_plan(plan: kubernetes.K8sPlan, opts: kubernetes.K8sOptions, operator: str) -> None:
    kubernetes._check_options(opts)
    if plan.gpus_per_node < 1:
        raise UsageError(f"--emit {operator} plans for GPUs", "this plan is for the CPU",
                         "plan for the cluster's GPUs with --gpus N --gpu-memory SIZE")
    if plan.nodes > 1:
        raise UsageError(f"--emit {operator} serves on one node", f"this plan needs {plan.nodes} nodes",
                         "use --emit kubernetes --nodes N (a LeaderWorkerSet), or plan for one node")


def _model_facts(plan: kubernetes.K8sPlan) -> tuple[str, str | None]:
    """(OME model format, architecture) from the folder."""
    from vmm.core.model import config as config_mod
    from vmm.core.model import formats

    fmt = formats.detect_format(plan.model_dir)
    cfg = config_mod.read_model_config(plan.model_dir)
    arch = cfg.architectures[0] if cfg.architectures else None
    return ("gguf" if fmt == "gguf" else "safetensors" if fmt == "safetensors" else fmt), arch


def ome_documents(plan: kubernetes.K8sPlan, opts: kubernetes.K8sOptions) -> list[dict]:
    _check_plan(plan, opts, "ome")
    name = kubernetes.object_name(plan.model_dir, opts.name)
    digest = digest_of(plan)
    fmt, arch = _model_facts(plan)
    if opts.volume == "hostpath":
        uri = f"local://{plan.model_dir}"
    else:
        uri = f"pvc://{opts.claim}/{_relative_dir(plan)}"
    model_format = {"name": fmt}
    framework = {"name": "transformers"}
    base_model = {"apiVersion": OME_API, "kind": "BaseModel", "metadata": _metadata(name, plan, digest),
                  "spec": {"displayName": plan.served_name, "modelFormat": model_format,
                           "modelFramework": framework, **({"modelArchitecture": arch} if arch else {}),
                           "storage": {"storageUri": uri}}}
    runtime = {"apiVersion": OME_API, "kind": "ServingRuntime", "metadata": _metadata(name, plan, digest),
               "spec": {"supportedModelFormats": [{"modelFormat": model_format, "modelFramework": framework,
                                                   **({"modelArchitecture": arch} if arch else {}),
                                                   "autoSelect": False, "priority": 1}],
                        "protocolVersions": ["openAI"],
                        "engineConfig": {
                            "initContainers": [readiness_check(plan, opts, digest)],
                            "runner": _runtime_container(plan, "ome-container", OME_MODEL_DIR),
                            "volumes": kubernetes._volumes(plan, opts),
                            "terminationGracePeriodSeconds": 60}}}
    service = {"apiVersion": OME_API, "kind": "InferenceService", "metadata": _metadata(name, plan, digest),
               "spec": {"model": {"name": name, "kind": "BaseModel"},
                        "runtime": {"name": name, "kind": "ServingRuntime"},
                        "engine": {"minReplicas": 1, "maxReplicas": 1}}}
    return [base_model, runtime, service]


def kserve_documents(plan: kubernetes.K8sPlan, opts: kubernetes.K8sOptions) -> list[dict]:
    _check_plan(plan, opts, "kserve")
    if opts.volume != "pvc":
        raise UsageError("--emit kserve reads the model from a PersistentVolumeClaim", f"--k8s-volume {opts.volume}",
                         "use --k8s-volume pvc (KServe's storageUri pvc://), or --emit ome for a node directory")
    name = kubernetes.object_name(plan.model_dir, opts.name)
    digest = digest_of(plan)
    models_volume = kubernetes._volumes(plan, opts)[0]
    runtime = {"apiVersion": KSERVE_RUNTIME_API, "kind": "ServingRuntime", "metadata": _metadata(name, plan, digest),
               "spec": {"supportedModelFormats": [{"name": KSERVE_MODEL_FORMAT, "version": "1",
                                                   "autoSelect": False, "priority": 1}],
                        "containers": [_runtime_container(plan, "kserve-container", KSERVE_MODEL_DIR)],
                        "volumes": [v for v in kubernetes._volumes(plan, opts) if v["name"] == "dshm"]}}
    service = {"apiVersion": KSERVE_API, "kind": "InferenceService", "metadata": _metadata(name, plan, digest),
               "spec": {"predictor": {
                   "minReplicas": 1, "maxReplicas": 1,
                   "model": {"modelFormat": {"name": KSERVE_MODEL_FORMAT, "version": "1"}, "runtime": name,
                             "storageUri": f"pvc://{opts.claim}/{_relative_dir(plan)}"},
                   "initContainers": [readiness_check(plan, opts, digest)],
                   "volumes": [models_volume]}}}
    return [runtime, service]


def emit_operator(operator: str, plan: kubernetes.K8sPlan, opts: kubernetes.K8sOptions) -> str:
    """``--emit ome`` / ``--emit kserve``: the operator's resources for the plan, as YAML."""
    if getattr(opts, "model_image", None):
        raise UsageError("--k8s-model-image goes with --emit kubernetes", f"--emit {operator}",
                         "OME and KServe read the model from the verified folder on the volume: drop --k8s-model-image")
    if operator == "ome":
        docs = ome_documents(plan, opts)
        header = [f"vLLM serving {plan.served_name} with OME (sgl-project/ome, {OME_API}): generated by vmm "
                  f"{__version__} (`vmm serve ... --emit ome`)",
                  "needs the OME operator installed; the model folder must already be on the volume "
                  "(--emit kubernetes-pull fills it)"]
    elif operator == "kserve":
        docs = kserve_documents(plan, opts)
        header = [f"vLLM serving {plan.served_name} with KServe ({KSERVE_API}): generated by vmm {__version__} "
                  "(`vmm serve ... --emit kserve`)",
                  f"needs KServe installed; model from pvc://{opts.claim} (--emit kubernetes-pull fills it)"]
    else:
        raise UsageError("unknown operator", operator, f"use {' or '.join(OPERATORS)}")
    return kubernetes._dump(docs, header)
