from tlbench.cli.app import main

main()
