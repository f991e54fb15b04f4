import sys

from ssamba.cli import main

sys.exit(main())
