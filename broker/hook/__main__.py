"""`python -m broker.hook` runs `broker-hook`."""

from broker.hook.main import main

raise SystemExit(main())
