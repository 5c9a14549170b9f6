import sys

from obrelay.cli import main

sys.exit(main())
