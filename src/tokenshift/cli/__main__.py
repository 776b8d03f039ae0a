"""``python -m tokenshift.cli``: the ``tokenshift`` command where its script is not on PATH."""

from tokenshift.cli import main

raise SystemExit(main())
