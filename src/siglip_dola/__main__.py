import sys

from siglip_dola.cli import main

sys.exit(main())
