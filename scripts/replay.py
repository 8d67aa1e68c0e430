"""Rebuild every read model from the events table into a fresh namespace and switch readers to it.

    python scripts/replay.py            # rebuild and switch
    python scripts/replay.py --verify   # rebuild aside, compare with the live models, exit 1 on a difference

Same as `echelon replay [--verify]`.
"""

import sys

from echelon.cli import main

if __name__ == "__main__":
    main(["replay", *sys.argv[1:]])
