"""The access token in front of ``glmtui web`` (textual-serve has no login of its own).

Whoever opens textual-serve's page drives the app (and the model), so a page
reachable from other machines needs a token. ``GatedServer`` is textual-serve's
``Server`` with one aiohttp middleware in front of every route: a request
without the session cookie gets the login page (``/``) or 401 (anything else,
the app's websocket included, so no app process starts before the login).
``POST /login`` compares the token in constant time; on success the browser
gets an HttpOnly, SameSite=Strict cookie holding a random session key of this
server process (never the token), valid until the browser or glmtui ends.

The token is never printed, logged, put in a URL or passed on to the app
sessions; the login form posts it in the body.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import os
import secrets
import sys
from typing import Optional

TOKEN_ENV = "GLMTUI_WEB_TOKEN"
WEB_TABLE = "web"  # config.toml: [web] token = "..."
COOKIE = "glmtui_web_session"
FAILED_LOGIN_DELAY = 1.0  # seconds before a wrong token is answered: slows guessing


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a server bound to ``host``."""
    host = (host or "").strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname, "", 0.0.0.0 ...: other machines may reach it


def resolve_token(cli_token: Optional[str], config_file, environ=os.environ) -> tuple[Optional[str], str]:
    """(the token, where it came from in words): ``--token``, else $GLMTUI_WEB_TOKEN, else
    ``token`` under [web] in config.toml; (None, "") when none is set. The variable is removed
    from ``environ`` so the API server and the app sessions do not inherit it."""
    from .config import read_table

    env_token = environ.pop(TOKEN_ENV, None) if hasattr(environ, "pop") else environ.get(TOKEN_ENV)
    if cli_token:
        return cli_token, "--token"
    if env_token:
        return env_token, f"${TOKEN_ENV}"
    value = read_table(config_file, WEB_TABLE).get("token")
    if isinstance(value, str) and value.strip():
        return value.strip(), f"token under [{WEB_TABLE}] in {config_file}"
    return None, ""


def refusal(host: str) -> str:
    return (f"glmtui web: --host {host} lets other machines drive the app; set an access token "
            f"(--token, ${TOKEN_ENV} or token under [{WEB_TABLE}] in config.toml) "
            "or keep --host 127.0.0.1 and use an SSH tunnel")


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>glmtui — access token</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #111; color: #ddd; display: flex;
       justify-content: center; align-items: center; height: 100vh; margin: 0; }}
form {{ background: #1c1c1c; padding: 2em; border-radius: 8px; min-width: 20em; }}
input {{ width: 100%; box-sizing: border-box; padding: .5em; margin: .5em 0 1em; font-size: 1em; }}
button {{ padding: .5em 1.5em; font-size: 1em; }}
.error {{ color: #f66; }}
</style></head>
<body><form method="post" action="/login">
<h2>glmtui</h2>
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
{message}
<button type="submit">Open</button>
</form></body></html>
"""


def login_page(message: str = "") -> str:
    note = f'<p class="error">{html.escape(message)}</p>' if message else ""
    return LOGIN_PAGE.format(message=note)


def display_url(host: str, port: int) -> str:
    """The address to give the user: this machine's name for a wildcard bind (0.0.0.0, ::)."""
    import socket

    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def make_gated_server(command: str, host: str, port: int, token: str, token_source: str, title: str = "glmtui"):
    """textual-serve's Server behind the access token (imported here: aiohttp is heavy)."""
    from aiohttp import web
    from textual_serve.server import Server

    class GatedServer(Server):
        def __init__(self) -> None:
            super().__init__(command, host=host, port=port, title=title)
            self._token = token.encode("utf-8")
            self._session = secrets.token_urlsafe(32)
            self._secure = self.public_url.startswith("https")

        def _signed_in(self, request) -> bool:
            cookie = request.cookies.get(COOKIE, "")
            return hmac.compare_digest(cookie.encode("utf-8"), self._session.encode("utf-8"))

        async def _make_app(self):
            app = await super()._make_app()

            @web.middleware
            async def gate(request, handler):
                if request.path == "/login" or self._signed_in(request):
                    return await handler(request)
                if request.path == "/" and request.method == "GET":
                    raise web.HTTPSeeOther("/login")
                return web.Response(status=401, text="glmtui web: sign in at /login first\n")

            app.middlewares.append(gate)
            app.router.add_get("/login", self.handle_login_page)
            app.router.add_post("/login", self.handle_login)
            return app

        async def handle_login_page(self, request):
            if self._signed_in(request):
                raise web.HTTPSeeOther("/")
            return self._page(login_page(), 200)

        async def handle_login(self, request):
            form = await request.post()
            given = str(form.get("token", "")).encode("utf-8")
            if not hmac.compare_digest(given, self._token):
                await asyncio.sleep(FAILED_LOGIN_DELAY)
                return self._page(login_page("That is not the access token."), 401)
            response = web.HTTPSeeOther("/")
            response.set_cookie(COOKIE, self._session, httponly=True, samesite="Strict", secure=self._secure,
                                path="/")
            raise response

        async def handle_index(self, request):
            # textual-serve writes absolute URLs (websocket, statics) from public_url, which for
            # --host 0.0.0.0 names no reachable machine and would not carry the cookie (another
            # host): use the address this browser used. No await before the page is built.
            self.public_url = f"{'https' if self._secure else 'http'}://{request.host}"
            return await super().handle_index(request)

        @staticmethod
        def _page(text: str, status: int):
            return web.Response(text=text, status=status, content_type="text/html",
                                headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})

        async def on_startup(self, app) -> None:
            # textual-serve prints its logo and the command; say where to go and where the token is
            print(f"glmtui web: open {display_url(host, port)}/ — it asks for the access token "
                  f"(set by {token_source}); Ctrl+C quits", file=sys.stderr, flush=True)

    return GatedServer()
