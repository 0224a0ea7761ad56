from tlbench.cli.main import main

main()
