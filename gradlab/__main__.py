"""``python -m gradlab`` runs the command line."""

from gradlab.cli import main

main()
