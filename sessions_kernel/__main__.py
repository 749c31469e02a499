"""``python -m sessions_kernel`` prints a fresh key for ``session.secret_key``.

It takes no argument but ``-h``/``--help``, which prints the usage and no key::

    python -m sessions_kernel                         # one key, on one line
    export SESSIONS_SECRET_KEY=$(python -m sessions_kernel)   # for session.secret_key_env
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .crypto import generate_secret_key


def main(argv: Sequence[str] | None = None) -> int:
    """Print a new key (or, with ``--help``, the usage); return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m sessions_kernel",
        description="Print a new random key (256 bits, URL-safe base64) for "
        "session.secret_key, or for the file or environment variable that "
        "session.secret_key_file or session.secret_key_env names.",
        epilog="To rotate keys, put the new key first and keep the old one after it, "
        "separated by a space: session.secret_key = NEW OLD",
    )
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(generate_secret_key())
    return 0


if __name__ == "__main__":
    sys.exit(main())
