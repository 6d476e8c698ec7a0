"""vmm: the model manager for vLLM hosts."""

__version__ = "0.2.0"
# The name it is published and installed under (`pip install vllm-model-manager`): the
# distribution `vmm` on PyPI is an unrelated project. The command and the package stay `vmm`.
DISTRIBUTION = "vllm-model-manager"
