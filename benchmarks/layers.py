"""Same as `covfuse bench layers` (see `covfuse bench --help`); kept so old commands still work."""
import sys

from covfuse.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", "layers", *sys.argv[1:]]))
