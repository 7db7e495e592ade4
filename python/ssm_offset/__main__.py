"""`python -m ssm_offset` is the `ssm-offset` command line."""
import sys

from .cli import main

sys.exit(main())
