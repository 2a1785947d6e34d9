"""`python -m client` is the same as the seg-client console script."""

import sys

from seg_client.cli import main

sys.exit(main())
