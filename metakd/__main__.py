import sys

from metakd.cli import main

if __name__ == "__main__":
    sys.exit(main())
