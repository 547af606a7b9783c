import sys

from icow.cli import main

sys.exit(main())
