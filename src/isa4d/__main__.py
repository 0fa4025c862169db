from isa4d.cli import main

main()
