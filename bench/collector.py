"""A collector stand-in for the benchmark: accepts OTLP/HTTP trace exports and counts them.

`python bench/collector.py PORT`: POST /v1/traces answers 200 with an empty export response (a valid empty
protobuf message) and counts the spans it decoded; GET /count answers {"posts": N, "spans": N}.
"""

from __future__ import annotations

import json
import sys

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

counts = {"posts": 0, "spans": 0}


async def traces(request: web.Request) -> web.Response:
    message = ExportTraceServiceRequest.FromString(await request.read())
    counts["posts"] += 1
    counts["spans"] += sum(len(s.spans) for r in message.resource_spans for s in r.scope_spans)
    return web.Response(body=b"", content_type="application/x-protobuf")


async def count(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(counts), content_type="application/json")


if __name__ == "__main__":
    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
