"""Same as `covfuse bench models` (see `covfuse bench --help`)."""
import sys

from covfuse.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "models", *sys.argv[1:]]))
