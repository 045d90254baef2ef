"""`python -m fmnist` is the `fmnist` command."""

from fmnist.cli import main

raise SystemExit(main())
