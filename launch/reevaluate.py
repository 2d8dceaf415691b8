"""Re-evaluate a finished search's networks with the official AutoAttack, from its files alone.

python launch/reevaluate.py results/NAME [--seed-offset N] [--tolerance T] [--device D]
"""

import sys

from semirobust_ray.reevaluate import main

if __name__ == "__main__":
    sys.exit(main())
