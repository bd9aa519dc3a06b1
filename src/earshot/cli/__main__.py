"""`python -m earshot.cli ...`, the same as the `earshot` command."""

from earshot.cli import main

main()
