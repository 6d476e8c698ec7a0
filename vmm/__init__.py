"""vmm: the model manager for vLLM hosts."""

__version__ = "0.2.0"
# The name it is published and installed under (`pip install vllm-model-manager`): the
# distribution `vmm` on PyPI is an unrelated project. The command and the package stay `vmm`.
DISTRIBUTION = "vllm-model-manager"
# vmm's own container image (Containerfile, docs/container.md): what generated Kubernetes
# manifests run `vmm check` / `vmm pull` in (`--k8s-vmm-image`), never a `pip install` at pod start.
IMAGE_REPOSITORY = f"ghcr.io/vmm-project/{DISTRIBUTION}"
IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
