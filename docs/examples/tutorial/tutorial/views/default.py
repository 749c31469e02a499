import sqlalchemy as sa
from pyramid.csrf import get_csrf_token
from pyramid.security import forget, remember
from pyramid.view import forbidden_view_config, view_config
from sessions_userid import invalidate_user_sessions, user_sessions

from ..models import User

#: "remember me": the cookie outlives the browser for 30 days
REMEMBER_MAX_AGE = 30 * 24 * 3600


@view_config(route_name="home", renderer="json")
def home(request):
    user = request.identity  # the policy's load_user(): None when nobody is logged in
    return {
        "user": user.name if user is not None else None,
        "messages": request.session.pop_flash(),
        # a template puts it in a hidden field named csrf_token of every form
        "csrf_token": get_csrf_token(request),
    }


@view_config(route_name="login", request_method="POST", renderer="json")
def login(request):
    # the CSRF check ran before this view (require_csrf): the token came with the form
    name = request.POST.get("name", "")
    user = request.dbsession.scalars(sa.select(User).where(User.name == name)).one_or_none()
    if user is None or not user.active or not user.check_password(request.POST.get("password", "")):
        request.response.status = 400
        return {"error": "wrong name or password"}
    # sets session.userid: a new session id (fixation defence), and sessions-userid gives
    # the session a new CSRF token, so that a token seen before the login fails after it
    remember(request, user.id)
    if request.POST.get("remember"):
        with request.session.settings as settings:  # this session's cookie only
            settings.cookie_max_age = REMEMBER_MAX_AGE
    request.session.flash(f"Welcome, {user.name}.")
    return {"user": user.name}


@view_config(route_name="logout", request_method="POST", renderer="json")
def logout(request):
    # a POST with the CSRF token: a link on another site cannot log the user out
    forget(request)  # deletes the session's row; its cookie is deleted
    return {"user": None}


@view_config(route_name="sessions", permission="account", renderer="json")
def your_sessions(request):
    return {
        "sessions": [
            {
                "id": s.short_id,
                "created": s.created,
                "last_active": s.last_active,
                "expires": s.expires,
                "current": s.current,
            }
            for s in user_sessions(request, request.authenticated_userid)
        ]
    }


@view_config(
    route_name="sessions_end_others", request_method="POST", permission="account", renderer="json"
)
def end_other_sessions(request):
    ended = invalidate_user_sessions(request, request.authenticated_userid, except_current=True)
    return {"ended": ended}


@forbidden_view_config(renderer="json")
def forbidden(request):
    if request.authenticated_userid is None:
        request.response.status = 401
        return {"error": "log in first"}
    request.response.status = 403
    return {"error": "not allowed"}
