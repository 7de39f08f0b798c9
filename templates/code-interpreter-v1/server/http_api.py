"""The HTTP API @e2b/code-interpreter speaks (port 49999):

  GET    /health                    200 "OK"
  POST   /execute                   {code, context_id?, language?, env_vars?} -> a stream of JSON lines
  POST   /contexts                  {language?, cwd?} -> {id, language, cwd}
  GET    /contexts                  -> [{id, language, cwd}]
  DELETE /contexts/{id}             204
  POST   /contexts/{id}/restart     204

Errors are plain text, as E2B's server answers them (the SDK shows 404 and 502 bodies).
The SDK also sends X-Access-Token on /execute; E2B's server uses it only to read the sandbox's
environment from envd. Here the node writes the sandbox's variables (those given at create) to
SANDBOX_ENV_FILE at every start, restores included, and every execution gets them beneath its own
env_vars; the token is unused.
"""
import asyncio
import json
import logging
import re

import tornado.iostream
import tornado.web

from contexts import Contexts, RequestError

log = logging.getLogger("http")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SANDBOX_ENV_FILE = "/etc/nestbox/env.json"


def sandbox_env() -> dict[str, str]:
    """The sandbox's variables as the node wrote them; none when the file is missing or odd."""
    try:
        with open(SANDBOX_ENV_FILE, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(v, str) and _ENV_NAME.fullmatch(k) and "\0" not in v}


class _Handler(tornado.web.RequestHandler):
    def initialize(self, contexts: Contexts):
        self.contexts = contexts

    def fail(self, status: int, message: str) -> None:
        self.clear()
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)

    def write_error(self, status_code: int, **kwargs) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(self._reason)

    def body_object(self) -> dict:
        """The JSON object of the body (an empty body is {}), or RequestError 400."""
        if not self.request.body:
            return {}
        try:
            body = json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the body is not valid JSON: {e}")
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object")
        return body

    def send_json(self, value) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(value))

    async def _guarded(self, work) -> None:
        try:
            await work()
        except RequestError as e:
            self.fail(e.status, str(e))
        except Exception as e:
            log.exception("%s %s failed", self.request.method, self.request.path)
            self.fail(500, f"the code interpreter failed: {e}")


def _optional_str(body: dict, key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(400, f'"{key}" must be a string or null')
    return value


def _env_vars(body: dict) -> dict[str, str]:
    value = body.get("env_vars")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(400, '"env_vars" must be an object of strings')
    for k, v in value.items():
        if not _ENV_NAME.fullmatch(k):
            raise RequestError(400, f'"{k}" is not a valid environment variable name')
        if not isinstance(v, str) or "\0" in v:
            raise RequestError(400, f'the value of environment variable "{k}" must be a string without NUL')
    return value


class Health(_Handler):
    def get(self):
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("OK")


class Execute(_Handler):
    _context = None
    _execution = None
    _relay: asyncio.Task | None = None

    async def post(self):
        await self._guarded(self._run_code)

    async def _run_code(self):
        body = self.body_object()
        code = body.get("code")
        if not isinstance(code, str):
            raise RequestError(400, '"code" must be a string')
        context_id = _optional_str(body, "context_id")
        language = _optional_str(body, "language")
        env_vars = {**sandbox_env(), **_env_vars(body)}
        if context_id and language:
            raise RequestError(400, "Only one of context_id or language can be provided")
        if context_id:
            ctx = self.contexts.get(context_id)
        else:
            ctx = await self.contexts.default_for(language)
        if self.request.connection.stream.closed():
            return

        self._context = ctx
        self._execution = ctx.submit(code, env_vars)
        self.set_header("Content-Type", "application/x-ndjson")
        self.set_header("Cache-Control", "no-store")
        self._relay = asyncio.create_task(self._relay_lines())
        try:
            await self._relay
        except (asyncio.CancelledError, tornado.iostream.StreamClosedError):
            self._context.abandon(self._execution)
            return
        self.finish()

    async def _relay_lines(self):
        async for line in self._execution.lines():
            self.write(json.dumps(line) + "\n")
            await self.flush()
        self.write('{"type": "end_of_execution"}\n')

    def on_connection_close(self):
        # The client left (its timeout passed, or it was stopped): the code is interrupted.
        if self._relay is not None:
            self._relay.cancel()


class ContextList(_Handler):
    async def get(self):
        self.send_json([c.describe() for c in self.contexts.all()])

    async def post(self):
        async def create():
            body = self.body_object()
            ctx = await self.contexts.create(_optional_str(body, "language"), _optional_str(body, "cwd"))
            self.send_json(ctx.describe())

        await self._guarded(create)


class ContextItem(_Handler):
    async def delete(self, context_id: str):
        async def remove():
            await self.contexts.remove(context_id)
            self.set_status(204)
            self.finish()

        await self._guarded(remove)


class ContextRestart(_Handler):
    async def post(self, context_id: str):
        async def restart():
            await self.contexts.get(context_id).restart()
            self.set_status(204)
            self.finish()

        await self._guarded(restart)


class NotFound(_Handler):
    def prepare(self):
        self.fail(404, f"no route {self.request.method} {self.request.path}")


def make_app(contexts: Contexts) -> tornado.web.Application:
    args = {"contexts": contexts}
    return tornado.web.Application(
        [
            (r"/health", Health, args),
            (r"/execute", Execute, args),
            (r"/contexts", ContextList, args),
            (r"/contexts/([^/]+)", ContextItem, args),
            (r"/contexts/([^/]+)/restart", ContextRestart, args),
        ],
        default_handler_class=NotFound,
        default_handler_args=args,
        log_function=lambda handler: None,  # no access log: the sandbox's output buffer is small
    )
