from kernelbook_cli import main

main()
