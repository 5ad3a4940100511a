import sys

from leaf_fer.cli import main

sys.exit(main())
