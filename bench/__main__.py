"""`python -m bench` (or `make bench`): run every benchmark."""

from __future__ import annotations

import sys

from bench import decision, issuance


def main() -> int:
    decision.main()
    print()
    issuance.main(sys.argv[1:])
    return 0


raise SystemExit(main())
