"""Nestbox's code interpreter server: what @e2b/code-interpreter talks to on port 49999 of a
code-interpreter-v1 sandbox. It starts the default Python context first and listens only once
that kernel answers, so "the port answers" means "ready to run code".

  python3 main.py        (NESTBOX_CODE_INTERPRETER_PORT, default 49999; all addresses)
"""
import asyncio
import logging
import os
import signal
import sys

import tornado.httpserver

from bash_shell import BashContext
from contexts import Contexts
from http_api import make_app
from python_kernel import PythonContext


async def serve(port: int) -> None:
    contexts = Contexts(default_cwd=os.path.expanduser("~"), factories={"python": PythonContext, "bash": BashContext})
    await contexts.default_for("python")
    server = tornado.httpserver.HTTPServer(make_app(contexts), idle_connection_timeout=3600)
    server.listen(port, address="0.0.0.0")
    logging.info("listening on 0.0.0.0:%d", port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    await contexts.stop_all()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="code-interpreter %(levelname)s %(name)s: %(message)s")
    port = int(os.environ.get("NESTBOX_CODE_INTERPRETER_PORT", "49999"))
    # The kernels inherit this: ipykernel's debugger would warn on every start otherwise.
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    asyncio.run(serve(port))


if __name__ == "__main__":
    main()
