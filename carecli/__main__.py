from carecli.launcher import main

main()
