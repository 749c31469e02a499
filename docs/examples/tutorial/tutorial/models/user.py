import hashlib
import hmac
import os

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .meta import Base

#: PBKDF2-SHA256 rounds (OWASP's figure); or use argon2-cffi, as the demo does
PASSWORD_ROUNDS = 600_000


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    password_hash: Mapped[str] = mapped_column(sa.String(200))
    active: Mapped[bool] = mapped_column(default=True)

    def set_password(self, password):
        salt = os.urandom(16)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PASSWORD_ROUNDS)
        self.password_hash = f"{PASSWORD_ROUNDS}${salt.hex()}${digest.hex()}"

    def check_password(self, password):
        rounds, salt, digest = self.password_hash.split("$")
        given = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(rounds))
        return hmac.compare_digest(given.hex(), digest)
