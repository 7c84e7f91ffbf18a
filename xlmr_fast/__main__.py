"""`python -m xlmr_fast ...` is the `xlmr-fast` command."""
import sys

from .cli import main

sys.exit(main())
