import sys

from covfuse.cli.main import main

sys.exit(main())
