"""`python -m blacktop` is the `blacktop` command."""

from blacktop.cli import main

raise SystemExit(main())
