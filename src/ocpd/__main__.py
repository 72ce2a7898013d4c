"""``python -m ocpd``: the same command line as the ``ocpd`` script."""

from ocpd.cli import main

raise SystemExit(main())
