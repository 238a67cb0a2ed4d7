from anpr.cli.main import main

main()
