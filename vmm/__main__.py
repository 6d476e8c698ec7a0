from vmm.cli import main

main()
