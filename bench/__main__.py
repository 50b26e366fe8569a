"""`python -m bench`: the side-by-side benchmark harness (see bench/README.md)."""

import sys

sys.exit("bench: the side-by-side harness is not written yet; see bench/README.md")
