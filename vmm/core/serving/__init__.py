"""Serving with vLLM: the installed vLLM, compatibility, GPUs, the planner, the launcher, runtime records."""
