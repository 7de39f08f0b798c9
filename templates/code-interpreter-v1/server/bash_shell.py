"""A bash context: one long-lived bash, so variables, functions and the working directory persist
from one execution to the next.

Each execution's code is written to a file the shell sources (stdin of the code is /dev/null, so
it cannot read the lines this server sends the shell), then the shell prints a per-context random
token on stdout (with the exit status) and on stderr: everything before the tokens is the code's
output. The shell is interactive (without line editing) only so that SIGINT aborts the code and
returns to the next line instead of ending the shell."""
import asyncio
import codecs
import os
import re
import secrets
import shlex
import shutil
import signal
import tempfile

import outputs
from contexts import Context, Execution

STARTUP_TIMEOUT_S = 30
_EXIT_STATUS = re.compile(rb" (\d+)\n")


class ShellGone(Exception):
    pass


async def _discard(name: str, text: str) -> None:
    pass


class _Stream:
    """One of the shell's output pipes, read up to the next token."""

    def __init__(self, reader: asyncio.StreamReader, name: str, token: bytes):
        self._reader = reader
        self._name = name
        self._token = token
        self._buf = b""

    async def read_until_token(self, emit) -> bytes:
        """Emits the text before the token (await emit(name, text)); returns what follows it on its line."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        keep = len(self._token) - 1  # a token may be split across reads
        while True:
            at = self._buf.find(self._token)
            if at >= 0:
                text = decoder.decode(self._buf[:at], final=True)
                if text:
                    await emit(self._name, text)
                rest = self._buf[at + len(self._token):]
                end = rest.find(b"\n")
                while end < 0:
                    chunk = await self._reader.read(4096)
                    if not chunk:
                        raise ShellGone()
                    rest += chunk
                    end = rest.find(b"\n")
                self._buf = rest[end + 1:]
                return rest[: end + 1]
            if len(self._buf) > keep:
                text = decoder.decode(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                if text:
                    await emit(self._name, text)
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ShellGone()
            self._buf += chunk


class BashContext(Context):
    language = "bash"

    def __init__(self, cwd: str):
        super().__init__(cwd)
        self._proc: asyncio.subprocess.Process | None = None
        self._dir: str | None = None
        self._count = 0
        self._dead: str | None = None

    async def start(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="nestbox-bash-")  # 0700: the cells' files
        token = secrets.token_hex(16).encode()
        self._proc = await asyncio.create_subprocess_exec(
            "/bin/bash", "--norc", "--noprofile", "--noediting", "-i",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd, start_new_session=True,  # its own process group: SIGINT reaches what it runs
            env={**os.environ, "TERM": "dumb", "PAGER": "cat"},
        )
        self._stdout = _Stream(self._proc.stdout, "stdout", token)
        self._stderr = _Stream(self._proc.stderr, "stderr", token)
        self._token = token.decode()
        # No prompts, history, history expansion (!) or mail checks; then the tokens, which also
        # skip what bash says on starting without a terminal ("no job control in this shell").
        self._send("PS1= PS2= PS0= PROMPT_COMMAND=; unset HISTFILE MAILCHECK; set +o history +H\n")
        self._send(self._marker_line())
        try:
            await asyncio.wait_for(self._read_to_marker(_discard), STARTUP_TIMEOUT_S)
        except (ShellGone, asyncio.TimeoutError):
            await self._kill()
            raise RuntimeError("bash did not start")
        self._dead = None
        self._count = 0

    def _send(self, text: str) -> None:
        self._proc.stdin.write(text.encode())

    def _marker_line(self) -> str:
        return f"builtin printf '%s %d\\n' {self._token} \"$?\"; builtin printf '%s\\n' {self._token} >&2\n"

    async def _read_to_marker(self, emit) -> int:
        """Relays the output up to the tokens; returns the exit status of the code."""
        status_line, _ = await asyncio.gather(self._stdout.read_until_token(emit), self._stderr.read_until_token(emit))
        m = _EXIT_STATUS.fullmatch(status_line)
        return int(m.group(1)) if m else -1

    async def _execute(self, ex: Execution, code: str, env_vars: dict[str, str]) -> None:
        if self._dead:
            ex.emit_last(outputs.error("ContextDied", self._dead))
            return
        self._count += 1
        await ex.emit(outputs.execution_count(self._count))
        cell = os.path.join(self._dir, "cell.sh")
        with open(cell, "w", encoding="utf-8") as f:
            f.write(code if code.endswith("\n") else code + "\n")
        # Assignments before `source` hold (exported) for that execution only.
        assignments = "".join(f"{k}={shlex.quote(v)} " for k, v in env_vars.items())
        try:
            self._send(f"{assignments}source {shlex.quote(cell)} </dev/null\n")
            self._send(self._marker_line())
            await self._proc.stdin.drain()
            status = await self._read_to_marker(lambda name, text: ex.emit(outputs.stream(name, text)))
        except (ShellGone, ConnectionError):
            code_ = await self._proc.wait()
            self._dead = f"The shell of this context exited (status {code_}); restart the context to run code in it again (its state is lost)"
            ex.emit_last(outputs.error("ContextDied", self._dead))
            return
        if status != 0:
            ex.emit_last(outputs.error("ExitCodeError", f"exit status {status}"))

    async def _interrupt(self) -> None:
        if self._proc and self._proc.returncode is None:
            os.killpg(self._proc.pid, signal.SIGINT)

    async def _kill(self) -> None:
        if self._proc and self._proc.returncode is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self._proc.wait()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _restart(self) -> None:
        await self._kill()
        await self.start()

    async def _stop(self) -> None:
        await self._kill()
        self._dead = "Context was removed"
