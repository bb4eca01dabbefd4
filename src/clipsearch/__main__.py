import sys

from clipsearch.cli import main

sys.exit(main())
