"""OpenTelemetry traces of the proxied requests (docs/telemetry.md).

Owns: a request's W3C trace context on the hot path (`context.py`: the client's `traceparent` continued, a span id
drawn for each attempt as its request is built, so the node is told that span's id), the spans a finished request
makes with the GenAI semantic conventions (`spans.py`), prompts and completions in those conventions' shape, only
when opted in (`content.py`), and getting them out of the process (`export.py`, the one module that imports the
OpenTelemetry SDK, on a thread of its own; `start.py` imports it only when traces are on).

May import: config, formats, metrics (a failure reason's category) and `StartupError`; never the proxy (which
imports `context.py`).
"""
