"""`python -m vmm`: the same entry point as the `vmm` console script."""

from vmm.cli import main

main()
