"""`python -m modelroute.server.cli` (tests run the CLI this way)."""

from modelroute.server.cli import main

main()
