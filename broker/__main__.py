"""`python -m broker` runs the `broker` command."""

from broker.cli.main import main

raise SystemExit(main())
