from sessions_userid import UserSessionSecurityPolicy

from .models import User


def load_user(userid, request):
    """The policy's callback: the user came with the session's SELECT (joined), so no SQL."""
    user = request.dbsession.get(User, userid)
    return user if user is not None and user.active else None


def includeme(config):
    config.set_security_policy(UserSessionSecurityPolicy(callback=load_user))
    config.include("sessions_csrf")  # CSRF tokens in the session's row
    config.set_default_csrf_options(require_csrf=True)  # every POST checks the token
