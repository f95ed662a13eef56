"""``python -m gradlab`` runs the command line."""

from gradlab.cli import app

app(prog_name="gradlab")
