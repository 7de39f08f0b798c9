"""A Python context: an IPython kernel (ipykernel) of its own, driven over the Jupyter protocol
with jupyter_client. Its IOPub messages become the lines of /execute; charts come back as the
PNG display data of matplotlib's inline backend."""
import asyncio
import json
import logging
import queue

from jupyter_client.manager import AsyncKernelManager

import outputs
from contexts import Context, Execution

log = logging.getLogger("python")

STARTUP_TIMEOUT_S = 60
# How long to wait for a kernel message before checking that the kernel still lives.
LIVENESS_POLL_S = 1.0


class KernelDied(Exception):
    pass


def _set_env_code(env_vars: dict[str, str]) -> str:
    # json.dumps of str keys and values is a valid Python literal: nothing in them is code.
    return (
        "import os as _nestbox_os\n"
        f"_nestbox_saved_env = {{k: _nestbox_os.environ.get(k) for k in {json.dumps(list(env_vars))}}}\n"
        f"_nestbox_os.environ.update({json.dumps(env_vars)})\n"
        "del _nestbox_os\n"
    )


RESTORE_ENV_CODE = (
    "import os as _nestbox_os\n"
    "for _nestbox_k, _nestbox_v in _nestbox_saved_env.items():\n"
    "    if _nestbox_v is None: _nestbox_os.environ.pop(_nestbox_k, None)\n"
    "    else: _nestbox_os.environ[_nestbox_k] = _nestbox_v\n"
    "del _nestbox_os, _nestbox_saved_env, _nestbox_k, _nestbox_v\n"
)


class PythonContext(Context):
    language = "python"

    def __init__(self, cwd: str):
        super().__init__(cwd)
        self._manager = AsyncKernelManager(kernel_name="python3")
        self._client = None
        self._dead: str | None = None  # why the kernel is gone, until a restart

    async def start(self) -> None:
        # The kernel inherits this server's environment (the sandbox's variables).
        await self._manager.start_kernel(cwd=self.cwd)
        try:
            await self._connect()
        except BaseException:
            await self._manager.shutdown_kernel(now=True)
            raise

    async def _connect(self) -> None:
        client = self._manager.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=STARTUP_TIMEOUT_S)
        except Exception:
            client.stop_channels()
            raise
        self._client = client
        self._dead = None

    async def _messages(self, msg_id: str):
        """The IOPub messages answering msg_id, until the kernel is idle again. Raises KernelDied."""
        while True:
            try:
                msg = await self._client.get_iopub_msg(timeout=LIVENESS_POLL_S)
            except queue.Empty:
                status = await self._manager.provisioner.poll() if self._manager.provisioner else -1
                if status is not None:
                    self._dead = f"The kernel of this context died (exit status {status}); restart the context to run code in it again (its state is lost)"
                    raise KernelDied(self._dead)
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue  # e.g. late output of an execution its client abandoned
            if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                return
            yield msg

    async def _quietly(self, code: str) -> None:
        msg_id = self._client.execute(code, silent=True, store_history=False, allow_stdin=False)
        async for msg in self._messages(msg_id):
            if msg["msg_type"] == "error":
                log.warning("helper code failed in context %s: %s", self.id, msg["content"].get("evalue"))

    async def _execute(self, ex: Execution, code: str, env_vars: dict[str, str]) -> None:
        if self._dead:
            ex.emit_last(outputs.error("ContextDied", self._dead))
            return
        try:
            if env_vars:
                await self._quietly(_set_env_code(env_vars))
            msg_id = self._client.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
            async for msg in self._messages(msg_id):
                line = _to_output(msg)
                if line is not None:
                    await ex.emit(line)
            if env_vars:
                await self._quietly(RESTORE_ENV_CODE)
        except KernelDied as e:
            ex.emit_last(outputs.error("ContextDied", str(e)))

    async def _interrupt(self) -> None:
        if not self._dead:
            await self._manager.interrupt_kernel()

    async def _restart(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
        # restart_kernel keeps the launch arguments (cwd) and works on a dead kernel too.
        await self._manager.restart_kernel(now=True)
        await self._connect()

    async def _stop(self) -> None:
        if self._client is not None:
            self._client.stop_channels()
            self._client = None
        await self._manager.shutdown_kernel(now=True)
        self._dead = "Context was removed"


def _to_output(msg: dict) -> dict | None:
    kind, content = msg["msg_type"], msg["content"]
    if kind == "execute_input":
        return outputs.execution_count(content["execution_count"])
    if kind == "stream":
        return outputs.stream(content["name"], content["text"], _date(msg))
    if kind == "execute_result":
        return outputs.result(content["data"], is_main_result=True)
    if kind == "display_data":
        return outputs.result(content["data"], is_main_result=False)
    if kind == "error":
        return outputs.error(content["ename"], content["evalue"], "\n".join(content["traceback"]))
    return None  # status, clear_output, update_display_data, comm messages


def _date(msg: dict) -> str | None:
    date = msg["header"].get("date")
    return date.isoformat() if hasattr(date, "isoformat") else date
