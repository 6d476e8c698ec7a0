"""The same serve plan as Kubernetes manifests: a Deployment (one node) or a LeaderWorkerSet
(``--nodes N``) running the official vLLM image, a Service, and a Job that fills the volume.

Sources for the shapes used here:
- vLLM's own multi-node recipe on LeaderWorkerSet: vllm-project/vllm
  docs/deployment/frameworks/lws.md and kubernetes-sigs/lws v0.10.0
  docs/examples/vllm/GPU/lws.yaml: leader runs
  ``/vllm-workspace/examples/online_serving/multi-node-serving.sh leader
  --ray_cluster_size=$(LWS_GROUP_SIZE)`` then the API server; workers run the same script
  with ``worker --ray_address=$(LWS_LEADER_ADDRESS)``; ``RecreateGroupOnPodRestart``; a
  memory-backed emptyDir at /dev/shm; the Service selects
  ``leaderworkerset.sigs.k8s.io/name`` and ``role: leader``.
- Kubernetes expands ``$(VAR)`` in ``command``/``args`` from the container's environment and
  ``$$(`` escapes it (Kubernetes docs, "Define a Command and Arguments for a Container").
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vmm import IMAGE, __version__
from vmm.core.errors import UsageError
from vmm.core.serving import deploy, multinode

if TYPE_CHECKING:
    from vmm.core.serving.launcher import ServeCommand

GiB = 1024 ** 3
MiB = 1024 ** 2
VOLUMES = ("pvc", "hostpath")
DEFAULT_CLAIM = "vmm-models"
DEFAULT_VMM_IMAGE = IMAGE          # the Containerfile's image at this version: vmm installed, nothing at start
VMM_IMAGE_UID = 10001               # the Containerfile's USER (tests/test_container.py checks they agree)
LWS_API = "leaderworkerset.x-k8s.io/v1"
RAY_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
# Start-up budget: engine start, torch.compile and CUDA graph capture (minutes on large
# models), then this node's weights read at a pessimistic network-volume speed.
STARTUP_BASE_S = 600
LOAD_BYTES_PER_S = 100 * MiB
RAY_WAIT_S = 300          # multi-node-serving.sh's own ray_init_timeout
PROBE_PERIOD_S = 10
HOST_RUNTIME_BYTES = 8 * GiB
SHM_PER_GPU_BYTES = 2 * GiB


@dataclass
class K8sOptions:
    volume: str = "pvc"                 # pvc | hostpath
    claim: str = DEFAULT_CLAIM
    vmm_image: str = DEFAULT_VMM_IMAGE
    name: str | None = None             # object name; default from the model
    model_image: str | None = None      # mount this OCI model artifact (image volume) instead of the root


@dataclass
class K8sPlan:
    """What the manifests need from a serve plan (all of it from launcher.build's ServeCommand)."""

    argv: list[str]
    env: dict[str, str]
    vmm_name: str                       # what `vmm pull` / `vmm check` are given
    served_name: str
    model_dir: Path
    root: Path
    gpus_per_node: int
    nodes: int
    weight_bytes: int
    vllm_version: str | None
    commit: str | None
    requirements: multinode.NodeRequirements | None = None


def plan_from(cmd: ServeCommand, vmm_name: str, served_name: str, model_dir: Path, root: Path, nodes: int,
              vllm_version: str | None) -> K8sPlan:
    """The manifests' inputs, all from launcher.build's ServeCommand (one plan, one argv)."""
    from vmm.core.store import manifests

    manifest = manifests.read_manifest(model_dir)
    # every GPU of one node: tp x dp (data-parallel replicas share the pod)
    gpus = cmd.plan.tensor_parallel_size * cmd.plan.data_parallel_size if cmd.plan.device != "cpu" else 0
    nodes = max(nodes, cmd.plan.pipeline_parallel_size)
    # The device plugin gives each pod its GPUs: this host's GPU numbering means nothing there.
    env = {k: v for k, v in cmd.env.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER")}
    vllm_version = deploy.target_vllm_version(cmd, vllm_version)
    return K8sPlan(argv=list(cmd.argv), env=env, vmm_name=vmm_name, served_name=served_name,
                   model_dir=model_dir, root=root, gpus_per_node=gpus, nodes=nodes,
                   weight_bytes=cmd.plan.weight_bytes, vllm_version=vllm_version,
                   commit=manifest.commit if manifest else None, requirements=cmd.identical)


def object_name(model_dir: Path, given: str | None = None) -> str:
    """A DNS-1035 label (Service names need it): lowercase, digits, '-', starts with a letter."""
    raw = given or "vllm-" + model_dir.name
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if not name or not name[0].isalpha():
        name = "vllm-" + name
    # LeaderWorkerSet pods are named <name>-<group>-<worker>: keep room under 63.
    name = name[:45].rstrip("-")
    if given and name != given:
        raise UsageError("not a valid Kubernetes object name", given,
                         "use lowercase letters, digits and '-', starting with a letter, at most 45 characters")
    return name


def _quantity(nbytes: int) -> str:
    return f"{max(1, math.ceil(nbytes / GiB))}Gi"


def _escape(word: str) -> str:
    """Keep Kubernetes from expanding ``$(...)`` inside a vLLM argument."""
    return word.replace("$(", "$$(")


def startup_budget_s(plan: K8sPlan) -> int:
    per_node = plan.weight_bytes / max(1, plan.nodes)
    budget = STARTUP_BASE_S + math.ceil(per_node / LOAD_BYTES_PER_S)
    return budget + (RAY_WAIT_S if plan.nodes > 1 else 0)


def host_memory_request(plan: K8sPlan) -> str:
    """This node's share of the weights (staged through host memory while loading), the Python
    and CUDA runtime, and the memory-backed /dev/shm (it counts against the pod's memory)."""
    per_node = math.ceil(plan.weight_bytes / max(1, plan.nodes))
    return _quantity(per_node + HOST_RUNTIME_BYTES + shm_bytes(plan))


def shm_bytes(plan: K8sPlan) -> int:
    return max(1, plan.gpus_per_node) * SHM_PER_GPU_BYTES


def vllm_image(version: str | None) -> str:
    return f"{deploy.DOCKER_IMAGE}:{'v' + version if version else 'latest'}"


def serving_args(argv: list[str]) -> tuple[list[str], int]:
    """The plan's ``vllm serve`` argv listening on every address, and its port."""
    model, flags = deploy.split_serve_argv(argv)
    flags = deploy.set_flag(flags, "--host", "0.0.0.0")
    port = int(deploy.flag_value(flags, "--port") or 8000)
    return [argv[0], argv[1], model, *flags], port


def _env(pairs: dict[str, str | None]) -> list[dict]:
    return [{"name": k, "value": v} for k, v in sorted(pairs.items()) if v is not None]


def _vmm_env(plan: K8sPlan, extra: dict[str, str] | None = None) -> list[dict]:
    return _env({"VMM_ROOT": str(plan.root), "VMM_MODEL": plan.vmm_name,
                 "NO_COLOR": "1", **(extra or {})})


def check_container(plan: K8sPlan, opts: K8sOptions) -> dict:
    """The pre-start check: a half-filled or damaged volume never serves (sizes only: fast)."""
    version = f" --vllm-version {plan.vllm_version}" if plan.vllm_version else ""
    return {"name": "vmm-check", "image": opts.vmm_image,
            # vmm comes with the image (--k8s-vmm-image): nothing is installed at pod start.
            "command": ["sh", "-c", f'exec vmm check "$VMM_MODEL" --fast{version}'],
            # The root is read-only here: vmm's state (a registry cache) goes to the pod's /tmp.
            "env": _vmm_env(plan, {"HF_HUB_OFFLINE": "1", "VMM_STATE_DIR": "/tmp/vmm-state"}),
            "volumeMounts": [{"name": "models", "mountPath": str(plan.root), "readOnly": True}]}


def _volumes(plan: K8sPlan, opts: K8sOptions) -> list[dict]:
    if opts.volume == "hostpath":
        models = {"name": "models", "hostPath": {"path": str(plan.root), "type": "Directory"}}
    else:
        models = {"name": "models", "persistentVolumeClaim": {"claimName": opts.claim, "readOnly": True}}
    return [models, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity(shm_bytes(plan))}}]


def _probe(port: int, period_s: int, failures: int) -> dict:
    return {"httpGet": {"path": "/health", "port": port}, "periodSeconds": period_s,
            "timeoutSeconds": 5, "failureThreshold": failures}


def vllm_container(plan: K8sPlan, name: str, command: list[str], args: list[str], port: int | None) -> dict:
    env = {**plan.env, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    if plan.requirements:
        env.update({k: v for k, v in plan.requirements.env.items() if v})
    container = {
        "name": name, "image": vllm_image(plan.vllm_version), "command": command,
        **({"args": args} if args else {}), "env": _env(env),
        "resources": {"limits": {"nvidia.com/gpu": str(plan.gpus_per_node)},
                      "requests": {"memory": host_memory_request(plan)}},
        "volumeMounts": [{"name": "models", "mountPath": str(plan.root), "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port}]
        container["startupProbe"] = _probe(port, PROBE_PERIOD_S, math.ceil(startup_budget_s(plan) / PROBE_PERIOD_S))
        container["readinessProbe"] = _probe(port, PROBE_PERIOD_S, 3)
        container["livenessProbe"] = _probe(port, 20, 3)
    return container


def _metadata(name: str, plan: K8sPlan, labels: dict | None = None) -> dict:
    return {"name": name,
            "labels": {"app.kubernetes.io/name": "vllm", "app.kubernetes.io/instance": name,
                       "app.kubernetes.io/managed-by": "vmm", **(labels or {})},
            "annotations": {"vmm/model": plan.served_name, **({"vmm/commit": plan.commit} if plan.commit else {})}}


def deployment(plan: K8sPlan, opts: K8sOptions, name: str) -> dict:
    argv, port = serving_args(plan.argv)
    selector = {"app.kubernetes.io/instance": name}
    pod = {"initContainers": [check_container(plan, opts)],
           "containers": [vllm_container(plan, "vllm", argv[:2], [_escape(a) for a in argv[2:]], port)],
           "volumes": _volumes(plan, opts),
           "terminationGracePeriodSeconds": 60}
    pod = _image_volume(pod, plan, opts)
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(name, plan),
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": {**_metadata(name, plan)["labels"]},
                                               "annotations": _metadata(name, plan)["annotations"]},
                                  "spec": pod}}}


def leader_worker_set(plan: K8sPlan, opts: K8sOptions, name: str) -> dict:
    argv, port = serving_args(plan.argv)
    # The vLLM argv travels as args: `sh -c SCRIPT arg0 args...` runs it as "$0" "$@", unquoted nowhere.
    leader_script = f"bash {RAY_SCRIPT} leader --ray_cluster_size=$(LWS_GROUP_SIZE) && exec \"$0\" \"$@\""
    worker_script = f"exec bash {RAY_SCRIPT} worker --ray_address=$(LWS_LEADER_ADDRESS)"

    def pod(container: dict) -> dict:
        return _image_volume({"initContainers": [check_container(plan, opts)], "containers": [container],
                              "volumes": _volumes(plan, opts), "terminationGracePeriodSeconds": 60}, plan, opts)

    leader = vllm_container(plan, "vllm-leader", ["sh", "-c", leader_script], [_escape(a) for a in argv], port)
    worker = vllm_container(plan, "vllm-worker", ["sh", "-c", worker_script], [], None)
    meta = _metadata(name, plan)
    return {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "metadata": meta,
            "spec": {"replicas": 1, "startupPolicy": "LeaderCreated",
                     "leaderWorkerTemplate": {
                         "size": plan.nodes, "restartPolicy": "RecreateGroupOnPodRestart",
                         "leaderTemplate": {"metadata": {"labels": {"role": "leader"},
                                                         "annotations": meta["annotations"]},
                                            "spec": pod(leader)},
                         "workerTemplate": {"metadata": {"labels": {"role": "worker"},
                                                         "annotations": meta["annotations"]},
                                            "spec": pod(worker)}}}}


def service(plan: K8sPlan, name: str) -> dict:
    _argv, port = serving_args(plan.argv)
    selector = ({"leaderworkerset.sigs.k8s.io/name": name, "role": "leader"} if plan.nodes > 1
                else {"app.kubernetes.io/instance": name})
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(name, plan),
            "spec": {"type": "ClusterIP", "selector": selector,
                     "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}


def pull_job(plan: K8sPlan, opts: K8sOptions, name: str) -> dict:
    """A Job that pulls the model into the volume (verified as it lands), then checks it fully."""
    if not plan.commit:
        raise UsageError("--emit kubernetes-pull needs a model vmm pulled", plan.vmm_name,
                         "it has no manifest to pin a revision; copy hand-made directories onto the volume yourself")
    version = f" --vllm-version {plan.vllm_version}" if plan.vllm_version else ""
    script = f'vmm pull "$VMM_MODEL" --revision {plan.commit} && exec vmm check "$VMM_MODEL"{version}'
    token = {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}}}
    volume = _volumes(plan, opts)[0]
    volume.get("persistentVolumeClaim", {}).pop("readOnly", None)
    container = {"name": "vmm-pull", "image": opts.vmm_image, "command": ["sh", "-c", script],
                 "env": _vmm_env(plan) + [token],
                 "volumeMounts": [{"name": "models", "mountPath": str(plan.root)}]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _metadata(f"{name}-pull", plan),
            "spec": {"backoffLimit": 3,
                     "template": {"metadata": {"labels": {"app.kubernetes.io/instance": f"{name}-pull"}},
                                  "spec": {"restartPolicy": "OnFailure", "containers": [container],
                                           # vmm's image runs as VMM_IMAGE_UID: the claim's files become
                                           # its group's (checked only at the root: no chown of a full volume).
                                           "securityContext": {"fsGroup": VMM_IMAGE_UID,
                                                               "fsGroupChangePolicy": "OnRootMismatch"},
                                           "volumes": [volume]}}}}


def _dump(docs: list[dict], header: list[str]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:     # no &id001 anchors for shared dicts
            return True

    body = "---\n".join(yaml.dump(d, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=100000)
                        for d in docs)
    return "".join(f"# {line}\n" for line in header) + "---\n" + body


# --------------------------------------------------------------------------- image volumes
# `--k8s-model-image REGISTRY/REPO:TAG` (an artifact `vmm push` wrote): the pod mounts it as
# an image volume (`volumes[].image.reference`, KEP-4639) at the model's directory, so no
# PVC and no fill Job. Kubernetes docs (kubernetes.io/docs/tasks/configure-pod-container/
# image-volumes, read 2026-12): alpha in v1.31, beta in v1.33 (ImageVolume feature gate, off
# by default), beta and on by default in v1.35; the runtime must support it (CRI-O mounts OCI
# artifacts' raw layers as files named by `org.opencontainers.image.title`: the docs' example
# mounts an artifact; containerd's support depends on its version). Not tried on a real
# cluster here (none reachable): docs/kubernetes.md says so.
IMAGE_VOLUME_MIN_K8S = "1.33"


def _image_volume(pod: dict, plan: K8sPlan, opts: K8sOptions) -> dict:
    """The pod with its models volume replaced by the artifact: mounted read-only at the
    model's own directory; the image is verified by digest on pull, so the pre-start
    `vmm check` (which reads a models root's manifest) is dropped."""
    if not opts.model_image:
        return pod
    volumes = [v for v in pod["volumes"] if v["name"] != "models"]
    pod["volumes"] = [{"name": "models", "image": {"reference": opts.model_image, "pullPolicy": "IfNotPresent"}},
                      *volumes]
    pod["initContainers"] = [c for c in pod.get("initContainers", []) if c["name"] != "vmm-check"]
    if not pod["initContainers"]:
        del pod["initContainers"]
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            if mount["name"] == "models":
                mount["mountPath"] = str(plan.model_dir)
    return pod


def _check_options(opts: K8sOptions) -> None:
    if opts.model_image is not None:
        from vmm.core.oci import reference

        if opts.model_image.startswith(reference.SCHEME):
            raise UsageError("--k8s-model-image takes REGISTRY/REPO[:TAG|@DIGEST] without oci://", opts.model_image,
                             "drop the oci:// prefix")
        reference.parse(opts.model_image)
    if opts.volume not in VOLUMES:
        raise UsageError("unknown --k8s-volume", opts.volume, "use pvc or hostpath")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", opts.claim):
        raise UsageError("not a valid claim name", opts.claim, "use lowercase letters, digits, '-' and '.'")


def emit_kubernetes(plan: K8sPlan, opts: K8sOptions) -> str:
    """Service + Deployment (one node) or Service + LeaderWorkerSet (``nodes > 1``), as YAML."""
    _check_options(opts)
    if plan.gpus_per_node < 1:
        raise UsageError("--emit kubernetes plans for GPUs", "this plan is for the CPU",
                         "plan for the cluster's GPUs with --gpus N --gpu-memory SIZE")
    name = object_name(plan.model_dir, opts.name)
    workload = leader_worker_set(plan, opts, name) if plan.nodes > 1 else deployment(plan, opts, name)
    header = [f"vLLM serving {plan.served_name}: generated by vmm {__version__} (`vmm serve ... --emit kubernetes`)",
              f"models volume: {opts.volume} at {plan.root} (read-only); fill it first: --emit kubernetes-pull"
              if not opts.model_image else
              f"model: image volume {opts.model_image} at {plan.model_dir} (read-only); needs Kubernetes >= "
              f"{IMAGE_VOLUME_MIN_K8S} with the ImageVolume feature gate (on by default from 1.35) and a runtime "
              "that mounts OCI artifacts (docs/kubernetes.md)"]
    if plan.nodes > 1:
        header.append(f"{plan.nodes} nodes x {plan.gpus_per_node} GPU(s): needs the LeaderWorkerSet controller "
                      "(kubernetes-sigs/lws) installed")
    return _dump([service(plan, name), workload], header)


def emit_kubernetes_pull(plan: K8sPlan, opts: K8sOptions) -> str:
    """The Job that fills the models volume with this model, verified."""
    _check_options(opts)
    if opts.model_image:
        raise UsageError("--k8s-model-image needs no fill Job", opts.model_image,
                         "use --emit kubernetes: the pod mounts the artifact itself")
    name = object_name(plan.model_dir, opts.name)
    header = [f"fill the models volume with {plan.vmm_name} at {plan.commit}: generated by vmm {__version__}",
              "Hub token (gated models): kubectl create secret generic hf-token --from-literal=token=hf_..."]
    if opts.volume == "hostpath":
        header.append("hostPath: run this Job once per node (add a nodeSelector kubernetes.io/hostname)")
    return _dump([pull_job(plan, opts, name)], header)
