import sys

from hepattr_jax.cli import main

sys.exit(main())
