"""Routes answered straight from the edge layer (api/edge.py), past the framework's own layers.

Between the edge layer and a route's handler FastAPI passes a request through its exception middleware,
its exit-stack middleware, the router's match over every route, and the route's own exception wrapper and two
exit stacks. For POST /runs that was about 40 µs of its ~260 µs of CPU (`bash scripts/bench_post_side.sh
default`, c=32: 259 → 223 µs per request). A direct route skips them, so it must need none of them: its
handler is a coroutine that takes the Request and answers a Response (it replaced FastAPI's generic handler,
which needs the exit stacks), with no dependency that yields, no uploaded file, and no body or form limit
of its own (checked here) or from its router's inclusion (not visible on the route: none is set here).
Its exceptions reach the app's own handlers as on the framework's path: one ExceptionMiddleware built from
them when the app builds its own (in the same call), and the route's wrapper, which hands a handler the
Request the route used. An unhandled one goes on to the server-error layer outside the edge, as before.

The edge sends here a request with a JSON body whose method and path are a direct route's, served at the
app's root (no `root_path`); anything else takes the framework's path, as does the route's OpenAPI entry.
A direct route must be the one the router would pick for its path (no earlier route or mount shadows it).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette._exception_handler import wrap_app_handling_exceptions  # as FastAPI's own routes use it
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from echelon_platform.errors import ConfigError


class DirectRoutes:
    def __init__(self, app: FastAPI, routes: Iterable[APIRoute]) -> None:
        self._app = app
        self._routes: dict[tuple[str, str], APIRoute] = {}
        for route in routes:
            _check_direct(app, route)
            for method in route.methods or ():
                self._routes[(method, route.path)] = route
        self._apps: dict[tuple[str, str], ASGIApp] = {}

    @classmethod
    def of_kind(cls, app: FastAPI, router: APIRouter, kind: type[APIRoute]) -> DirectRoutes:
        """The routes of `router` made with the route class `kind`."""
        return cls(app, [route for route in router.routes if isinstance(route, kind)])

    def build(self) -> None:
        """Make the direct apps, with the app's exception handlers of now: called by the edge layer when the
        app builds its middleware stack, so both paths answer with the same handlers."""
        self._apps = {key: self._direct(route) for key, route in self._routes.items()}

    def app_for(self, scope: Scope) -> ASGIApp | None:
        """The direct app answering this request, or None (the framework's path)."""
        if scope.get("root_path"):  # the router strips a root path from the path first: leave it to the router
            return None
        return self._apps.get((scope["method"], scope["path"]))

    def _direct(self, route: APIRoute) -> ASGIApp:
        handler = route.get_route_handler()
        router = self._app.router

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            # What the router would have put in the scope (the access line's route label reads "route").
            scope["router"] = router
            scope["route"] = route
            scope["endpoint"] = route.endpoint
            scope["path_params"] = {}
            request = Request(scope, receive, send)

            async def respond(scope: Scope, receive: Receive, send: Send) -> None:
                response = await handler(request)
                await response(scope, receive, send)

            await wrap_app_handling_exceptions(respond, request)(scope, receive, send)

        # As FastAPI builds its own: the 500 / Exception handler belongs to the server-error layer.
        handlers = {k: v for k, v in self._app.exception_handlers.items() if k not in (500, Exception)}
        return ExceptionMiddleware(answer, handlers=handlers, debug=self._app.debug)


def _check_direct(app: FastAPI, route: APIRoute) -> None:
    """Refuse a route that needs what the direct path skips, or that the app serves at another path."""
    if type(route).get_route_handler is APIRoute.get_route_handler:
        raise ConfigError(f"{route.path}: FastAPI's generic handler needs the layers a direct route skips")
    if not inspect.iscoroutinefunction(route.get_route_handler()):
        raise ConfigError(f"{route.path}: a direct route's handler must be a coroutine function")
    if getattr(route, "max_body_size", None) is not None or getattr(route, "form_limits", None):
        raise ConfigError(f"{route.path}: a direct route cannot have a body or form limit of its own")
    if app.url_path_for(route.name) != route.path:
        raise ConfigError(f"{route.path}: the app serves this route at {app.url_path_for(route.name)}")
