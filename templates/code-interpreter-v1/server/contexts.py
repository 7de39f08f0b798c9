"""Contexts: each one a kernel (Python) or a shell (bash) of its own, whose state persists from
one execution to the next. Executions in one context run one at a time, in the order they came."""
import asyncio
import logging
import os
import uuid
from typing import AsyncIterator

import outputs

log = logging.getLogger("contexts")

LANGUAGES = ("python", "bash")
_ALIASES = {"python3": "python", "py": "python", "sh": "bash"}


class RequestError(Exception):
    """A request the client must change: answered with `status` and the message as text."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def normalize_language(language: str | None) -> str:
    """The language a request names (none: Python), or RequestError 400."""
    if language is None or not language.strip():
        return "python"
    name = language.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in LANGUAGES:
        raise RequestError(400, f'language "{language}" is not available in this sandbox (available: {", ".join(LANGUAGES)})')
    return name


# Output lines held for a client slower than the code: beyond this, the code's output is not
# read (the kernel or shell waits) until the client has taken half of them.
MAX_BUFFERED_LINES = 256


class Execution:
    """One run of code: its output lines in order, then the end. A client that left abandons it:
    the code is interrupted and its further output dropped."""

    def __init__(self):
        self._lines: asyncio.Queue = asyncio.Queue()
        self._drained = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.abandoned = False
        # Why it was cut short by its context (restart, removal): reported as its error.
        self.abort_reason: tuple[str, str] | None = None

    async def emit(self, line: dict) -> None:
        """Queues a line; waits while the client is MAX_BUFFERED_LINES behind."""
        if self.abandoned:
            return
        self._lines.put_nowait(line)
        while self._lines.qsize() > MAX_BUFFERED_LINES and not self.abandoned:
            self._drained.clear()
            await self._drained.wait()

    def emit_last(self, line: dict) -> None:
        """A line that ends the execution (its error): never waits."""
        if not self.abandoned:
            self._lines.put_nowait(line)

    def finish(self) -> None:
        self._lines.put_nowait(None)

    def abandon(self) -> None:
        self.abandoned = True
        self._drained.set()

    async def lines(self) -> AsyncIterator[dict]:
        while (line := await self._lines.get()) is not None:
            if self._lines.qsize() <= MAX_BUFFERED_LINES // 2:
                self._drained.set()
            yield line


class Context:
    """What both kinds share: identity, the queue of executions, cancellation."""

    language = ""

    def __init__(self, cwd: str):
        self.id = str(uuid.uuid4())
        self.cwd = cwd
        self._turn = asyncio.Lock()
        self._running: Execution | None = None
        self._pending: set[Execution] = set()

    def describe(self) -> dict:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    # --- to implement ---------------------------------------------------------------------------
    async def start(self) -> None:
        raise NotImplementedError

    async def _execute(self, ex: Execution, code: str, env_vars: dict[str, str]) -> None:
        """Runs code, emitting its lines; returns when the code has finished."""
        raise NotImplementedError

    async def _interrupt(self) -> None:
        """Stops the code running now (SIGINT), keeping the context's state."""
        raise NotImplementedError

    async def _restart(self) -> None:
        """A fresh process in place of the old one (state lost); the turn is held."""
        raise NotImplementedError

    async def _stop(self) -> None:
        """Ends the context's processes for good; the turn is held."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    def submit(self, code: str, env_vars: dict[str, str]) -> Execution:
        ex = Execution()
        self._pending.add(ex)
        ex.task = asyncio.create_task(self._serve(ex, code, env_vars))
        return ex

    async def _serve(self, ex: Execution, code: str, env_vars: dict[str, str]) -> None:
        try:
            async with self._turn:
                self._running = ex
                try:
                    await self._execute(ex, code, env_vars)
                finally:
                    self._running = None
        except asyncio.CancelledError:
            name, value = ex.abort_reason or ("ExecutionCancelled", "The execution was cancelled")
            ex.emit_last(outputs.error(name, value))
        except Exception as e:  # a fault of this server, not of the code: reported, not swallowed
            log.exception("execution in context %s failed", self.id)
            ex.emit_last(outputs.error("InternalError", f"The code interpreter failed: {e}"))
        finally:
            self._pending.discard(ex)
            ex.finish()

    def abandon(self, ex: Execution) -> None:
        """The client left (disconnected, or its timeout passed): interrupt the code if it runs,
        drop it if it still waits for its turn."""
        ex.abandon()
        if ex is self._running:
            asyncio.create_task(self._interrupt_quietly())
        elif ex.task and not ex.task.done():
            ex.task.cancel()

    async def _interrupt_quietly(self) -> None:
        try:
            await self._interrupt()
        except Exception:
            log.exception("interrupting context %s failed", self.id)

    def _abort_all(self, name: str, value: str) -> None:
        for ex in list(self._pending):
            ex.abort_reason = (name, value)
            if ex.task and not ex.task.done():
                ex.task.cancel()

    async def restart(self) -> None:
        self._abort_all("ContextRestarting", "Context was restarted")
        async with self._turn:
            await self._restart()

    async def stop(self) -> None:
        self._abort_all("ContextRemoved", "Context was removed")
        async with self._turn:
            await self._stop()


class Contexts:
    """All contexts of this server, and the default context of each language (the one used when a
    request names no context)."""

    def __init__(self, default_cwd: str, factories: dict):
        self._default_cwd = default_cwd
        self._factories = factories  # language -> Context subclass
        self._by_id: dict[str, Context] = {}
        self._defaults: dict[str, str] = {}
        self._default_lock = asyncio.Lock()

    async def create(self, language: str | None, cwd: str | None) -> Context:
        name = normalize_language(language)
        if cwd is None or cwd == "":
            cwd = self._default_cwd
        if not os.path.isabs(cwd):
            raise RequestError(400, f'cwd "{cwd}" is not an absolute path')
        if not os.path.isdir(cwd):
            raise RequestError(400, f'cwd "{cwd}" is not a directory')
        ctx = self._factories[name](cwd)
        await ctx.start()
        self._by_id[ctx.id] = ctx
        log.info("context %s (%s, cwd %s) started", ctx.id, name, cwd)
        return ctx

    async def default_for(self, language: str | None) -> Context:
        name = normalize_language(language)
        async with self._default_lock:
            ctx = self._by_id.get(self._defaults.get(name, ""))
            if ctx is None:
                ctx = await self.create(name, None)
                self._defaults[name] = ctx.id
            return ctx

    def get(self, context_id: str) -> Context:
        ctx = self._by_id.get(context_id)
        if ctx is None:
            raise RequestError(404, f"Context {context_id} not found")
        return ctx

    def all(self) -> list[Context]:
        return list(self._by_id.values())

    async def remove(self, context_id: str) -> None:
        ctx = self.get(context_id)
        del self._by_id[context_id]
        await ctx.stop()

    async def stop_all(self) -> None:
        contexts, self._by_id = list(self._by_id.values()), {}
        await asyncio.gather(*(c.stop() for c in contexts), return_exceptions=True)
