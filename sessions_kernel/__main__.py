"""``python -m sessions_kernel`` prints a fresh key for ``session.secret_key``."""

from .crypto import generate_secret_key

print(generate_secret_key())
