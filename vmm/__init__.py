"""vmm: the model manager for vLLM hosts."""

__version__ = "0.1.0"
