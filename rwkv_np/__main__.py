"""`python -m rwkv_np ...`: the same command line as the `rwkv-np` console script."""

import sys

from .cli import main

sys.exit(main())
