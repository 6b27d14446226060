import sys

from metakd.interrupt import run_stoppable


def _main() -> int:
    from metakd.cli import run_main  # imports Lightning (seconds): a stop meanwhile is handled too

    return run_main()


if __name__ == "__main__":
    sys.exit(run_stoppable(_main))
