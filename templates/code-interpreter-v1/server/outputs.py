"""The lines POST /execute streams: one JSON object per line, as @e2b/code-interpreter parses them.

  {"type": "number_of_executions", "execution_count": 3}
  {"type": "stdout" | "stderr", "text": "...", "timestamp": "<ISO 8601>"}
  {"type": "result", "is_main_result": true, "text": "...", "png": "<base64>", ...}
  {"type": "error", "name": "ZeroDivisionError", "value": "division by zero", "traceback": "..."}
  {"type": "end_of_execution"}
"""
import datetime

# A Jupyter MIME bundle's types under the names E2B's results use; other types keep their
# MIME name (the SDK lists them in Result.extra).
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
}
_RESERVED = ("type", "is_main_result")

END_OF_EXECUTION = {"type": "end_of_execution"}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def execution_count(count: int) -> dict:
    return {"type": "number_of_executions", "execution_count": count}


def stream(name: str, text: str, timestamp: str | None = None) -> dict:
    """name: "stdout" or "stderr"."""
    return {"type": name, "text": text, "timestamp": timestamp or _now()}


def result(bundle: dict, is_main_result: bool) -> dict:
    """An execute_result (the cell's value) or display_data (a chart, a display() call)."""
    out = {"type": "result", "is_main_result": is_main_result}
    for mime, value in bundle.items():
        field = MIME_FIELDS.get(mime, mime)
        if field not in _RESERVED:
            out[field] = value
    text = out.get("text")
    # As E2B gives it: a str value without the quotes of its repr.
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == "'":
        out["text"] = text[1:-1]
    return out


def error(name: str, value: str, traceback: str = "") -> dict:
    return {"type": "error", "name": name, "value": value, "traceback": traceback}
