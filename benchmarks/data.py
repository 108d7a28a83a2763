"""Same as `covfuse bench data` (see `covfuse bench --help`); kept so old commands still work."""
import sys

from covfuse.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
