"""The vmm library: no terminal, no printing, no exiting. The CLI is a veneer over it."""
