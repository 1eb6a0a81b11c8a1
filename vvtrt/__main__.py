from vvtrt.cli import main

main()
