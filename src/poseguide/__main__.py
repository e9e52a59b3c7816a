import sys

from poseguide.cli import main

sys.exit(main())
