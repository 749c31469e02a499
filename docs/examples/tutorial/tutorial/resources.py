from pyramid.authorization import Allow, Authenticated


class Root:
    """The root factory: who may do what, for the security policy's permits()."""

    __acl__ = [
        (Allow, Authenticated, "account"),  # logged-in users see their account pages
    ]

    def __init__(self, request):
        self.request = request
