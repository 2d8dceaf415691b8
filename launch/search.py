#!/usr/bin/env python
"""Find the minimal robust split with Ray Tune: ``python launch/search.py --help``."""

import sys

from semirobust_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
