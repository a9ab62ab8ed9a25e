"""`python -m otel_puppy` is `otel-puppy`."""

from otel_puppy.cli import main

raise SystemExit(main())
