from wherecnn.cli import main

main()
