import sys

from matrix_p2p.cli import main

sys.exit(main())
