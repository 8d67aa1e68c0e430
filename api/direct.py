"""Routes answered straight from the edge layer (api/edge.py), past the framework's own layers.

Between the edge layer and a route's handler FastAPI passes a request through its exception middleware,
its exit-stack middleware, the router's match over every route, and the route's own exception wrapper and two
exit stacks. For POST /runs that was about 40 µs of its ~260 µs of CPU (`bash scripts/bench_post_side.sh
default`, c=32: 259 → 217 µs per request). A direct route skips them, so it must need none of them: its
handler takes the Request and answers a Response (it replaced FastAPI's generic handler, which needs the exit
stacks), with no dependency that yields and no uploaded file. Its exceptions reach the app's own handlers
through one ExceptionMiddleware built from them, as on the framework's path (an unhandled one goes on to the
server-error layer outside the edge, as before). The route stays in the router: its OpenAPI entry, and any
request the edge does not send here (another method, a mounted root path), are the framework's as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from echelon_platform.errors import ConfigError


class DirectRoutes:
    def __init__(self, app: FastAPI, routes: Iterable[APIRoute]) -> None:
        self._app = app
        self._routes: dict[tuple[str, str], APIRoute] = {}
        for route in routes:
            if type(route).get_route_handler is APIRoute.get_route_handler:
                raise ConfigError(f"{route.path}: FastAPI's generic handler needs the layers a direct route skips")
            for method in route.methods or ():
                self._routes[(method, route.path)] = route
        self._apps: dict[tuple[str, str], ASGIApp] = {}

    @classmethod
    def of_kind(cls, app: FastAPI, router: APIRouter, kind: type[APIRoute]) -> DirectRoutes:
        """The routes of `router` made with the route class `kind`; the app includes `router` as it is (no
        prefix or dependencies added), so a route's path is the app's path."""
        return cls(app, [route for route in router.routes if isinstance(route, kind)])

    def app_for(self, scope: Scope) -> ASGIApp | None:
        """The direct app answering this request, or None (the framework's path)."""
        if scope.get("root_path"):  # mounted under a prefix: the router strips it, leave it to the router
            return None
        key = (scope["method"], scope["path"])
        app = self._apps.get(key)
        if app is None:
            route = self._routes.get(key)
            if route is None:
                return None
            # Built at the first request: every exception handler is registered by then.
            app = self._apps[key] = self._direct(route)
        return app

    def _direct(self, route: APIRoute) -> ASGIApp:
        handler = route.get_route_handler()
        router = self._app.router

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            # What the router would have put in the scope (the access line's route label reads "route").
            scope["router"] = router
            scope["route"] = route
            scope["endpoint"] = route.endpoint
            scope["path_params"] = {}
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        # As FastAPI builds its own: the 500 / Exception handler belongs to the server-error layer.
        handlers = {k: v for k, v in self._app.exception_handlers.items() if k not in (500, Exception)}
        return ExceptionMiddleware(answer, handlers=handlers, debug=self._app.debug)
