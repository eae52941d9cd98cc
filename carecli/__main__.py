from carecli.cli.main import main

main()
