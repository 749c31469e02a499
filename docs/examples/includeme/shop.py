"""An application's views using what ``sessions-views`` configured (see ``sessions_views``)."""

from __future__ import annotations

from typing import Any

from pyramid.config import Configurator
from pyramid.view import view_config


@view_config(route_name="cart", request_method="POST", renderer="json")
def add_to_cart(request: Any) -> dict[str, Any]:
    cart = [*request.session.get("cart", []), request.json_body["item"]]
    request.session["cart"] = cart
    return {"cart": cart}


@view_config(route_name="checkout", renderer="json", session_has="cart")
def checkout(request: Any) -> dict[str, Any]:
    return {"checkout": request.session["cart"]}


@view_config(route_name="checkout", renderer="json")
def empty_cart(request: Any) -> dict[str, Any]:
    return {"checkout": None, "message": "your cart is empty"}


@view_config(route_name="status", renderer="json")
def status(request: Any) -> dict[str, Any]:
    peek = request.peek_session()  # not a use of the session: nothing is extended
    return {"stored": peek.valid, "reason": peek.reason}


def includeme(config: Configurator) -> None:
    config.add_route("cart", "/cart")
    config.add_route("checkout", "/checkout")
    config.add_route("status", "/status")
    config.scan(__name__)
