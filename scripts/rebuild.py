"""Rebuild every read model from the events table into a fresh namespace and switch readers to it.

    python scripts/rebuild.py            # rebuild and switch
    python scripts/rebuild.py --verify   # rebuild aside, compare with the live models, exit 1 on a difference

Same as `echelon rebuild [--verify]`.
"""

import sys

from echelon.cli import main

if __name__ == "__main__":
    main(["rebuild", *sys.argv[1:]])
