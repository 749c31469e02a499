import sqlalchemy as sa
from sessions_absolute_timeout import AbsoluteMixin
from sessions_cookie_settings import ConfigCookieMixin
from sessions_csrf import CSRFMixin
from sessions_idle_timeout import IdleMixin
from sessions_renewal import RenewalMixin
from sessions_userid import UseridMixin
from sqlalchemy.orm import Mapped, mapped_column, relationship

from sessions_kernel import BaseMixin, add_indexes

from .meta import Base
from .user import User


class Session(
    IdleMixin,  # idle timeout: session.idle_timeout
    AbsoluteMixin,  # absolute timeout: session.absolute_timeout
    RenewalMixin,  # the cookie's id renewed: session.renewal_timeout
    ConfigCookieMixin,  # cookie attributes per session ("remember me")
    UseridMixin,  # request.session.userid, the security policy, "your sessions"
    CSRFMixin,  # the CSRF token in a column
    BaseMixin,
    Base,
):
    __tablename__ = "session"

    # the user id as a foreign key to our users (nullable, indexed: the plugin's rules)
    userid: Mapped[int | None] = mapped_column(
        sa.ForeignKey(User.id, ondelete="CASCADE"), index=True
    )
    # the user read in the session's own SELECT
    user: Mapped[User | None] = relationship(lazy="joined")


add_indexes(Session)  # the indexes the timeout plugins' garbage collection needs
