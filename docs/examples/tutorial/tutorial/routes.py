def includeme(config):
    config.add_route("home", "/")
    config.add_route("login", "/login")
    config.add_route("logout", "/logout")
    config.add_route("sessions", "/sessions")
    config.add_route("sessions_end_others", "/sessions/end-others")
