#!/usr/bin/env python
"""Find the minimal robust split with Ray Tune (``semirobust search``): ``--help`` lists the flags."""

import sys

from semirobust_ray.cli import search_main

if __name__ == "__main__":
    sys.exit(search_main())
