"""``python -m tokenshift``: the ``tokenshift`` command, for environments without its script on PATH."""

from tokenshift.cli import main

if __name__ == "__main__":
    raise SystemExit(main())  # its exit status, as the console script gives it
