"""`python -m rwkv_np.exercises write-solutions DIR`: the exercise notebooks, solved (for a teacher)."""

import sys

from . import main

sys.exit(main())
