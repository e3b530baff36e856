"""``python -m lamflow`` is the same as the ``lamflow`` console script."""
from lamflow.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
