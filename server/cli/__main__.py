"""`python -m modelroute.server.cli` (tests run the CLI this way)."""

from . import main

main()
