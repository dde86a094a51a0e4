from vaultsync.cli import main

main()
