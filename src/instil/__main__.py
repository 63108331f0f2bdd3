"""`python -m instil` (and `torchrun -m instil`) runs the command line."""

from instil.cli import main

raise SystemExit(main())
