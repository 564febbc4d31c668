from clan_vm_tasks.cli import main

main()
