"""Spans out of the process: OpenTelemetry's SDK, fed from a thread of our own. The only module that imports it.

The event loop only appends a finished request to a bounded queue (`put`). A thread wakes every INTERVAL
seconds, turns what is queued into spans (spans.py) with their real start and end times, and hands them to
the SDK's BatchSpanProcessor, whose own thread sends batches with the OTLP/HTTP exporter. The span ids are
the ones drawn on the hot path (context.py): a node was already told its attempt's id in `traceparent`.
Nothing here can fail a request: a full queue drops traces (one WARNING per episode), a collector that is
down or refuses fails the export (one WARNING per episode, the exporter's own log lines held back), and the
sidecar's stop waits at most STOP_WAIT seconds for the last batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from sidecar.config.telemetry import Export

from .context import Trace, Tracing
from .spans import Where, spans_of

log = logging.getLogger("llm_sidecar")

QUEUE_MAX = 8192  # finished requests waiting for the thread; past it their traces are dropped
# With prompts and completions a request's spans may carry ~400 KB (content.py's bounds): fewer are held while a
# collector is down (the SDK's queue counts spans, not bytes), and fewer go in one export (a collector's limit).
CONTENT_QUEUE, CONTENT_SPANS, CONTENT_BATCH = 512, 256, 32
INTERVAL = 0.2  # seconds between the thread's turns
STOP_WAIT = 3.0  # seconds the sidecar's stop waits for the last spans to go
KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)


class Held(logging.Handler):
    """Takes the OTLP exporter's own lines (several per failed batch) out of the log, keeping the first since
    the last export that worked: it says why (the last one only says the retries ran out)."""

    def __init__(self) -> None:
        super().__init__()
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.first:
            self.first = record.getMessage()[:300]


class Watched(SpanExporter):
    """The OTLP exporter, saying once when exports start failing and once when they work again."""

    def __init__(self, inner: SpanExporter, where: str, held: Held) -> None:
        self.inner = inner
        self.where = where
        self.held = held
        self.failing = False
        self.lost = 0  # spans whose export failed in this episode

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # never let the exporter's thread die
            self.held.first = self.held.first or f"{type(exc).__name__}: {exc}"[:300]
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE:
            self.lost += len(spans)
            if not self.failing:
                self.failing = True
                why = f" ({self.held.first})" if self.held.first else ""
                log.warning("traces: cannot export spans to %s%s; requests are not affected", self.where, why)
        else:
            if self.failing:
                log.info("traces: exporting to %s again (%d spans lost meanwhile)", self.where, self.lost)
                self.failing, self.lost = False, 0
            self.held.first = ""
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def resource(version: str) -> Resource:
    """service.name llm-sidecar unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name the service."""
    found = Resource.create({SERVICE_VERSION: version})
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: "llm-sidecar"}))
    return found


class Exporter:
    """Owns the queue, the thread and the batch processor: `close()` stops them all."""

    def __init__(self, export: Export, version: str) -> None:
        self.export = export
        self.content = export.content
        self.queue: deque[tuple[Trace, dict[str, Any]]] = deque()
        self.limit = CONTENT_QUEUE if export.content else QUEUE_MAX
        self.dropped = 0  # traces dropped with the queue full, since the thread last said so
        self.cache: dict[str, Where] = {}
        self.held = Held()
        quiet = logging.getLogger("opentelemetry.exporter")  # its modules' loggers are children of this one
        quiet.addHandler(self.held)
        quiet.propagate = False
        # A client's tracestate the SDK finds invalid is dropped (as W3C says), not logged once per request.
        logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
        self.resource = resource(version)
        self.scope = InstrumentationScope("llm-sidecar", version)
        self.watched = Watched(OTLPSpanExporter(endpoint=export.endpoint), export.shown, self.held)
        self.processor = (
            BatchSpanProcessor(self.watched, max_queue_size=CONTENT_SPANS, max_export_batch_size=CONTENT_BATCH)
            if export.content
            else BatchSpanProcessor(self.watched)  # sized by OTEL_BSP_* (2048 spans, 512 per export by default)
        )
        self.tracing = Tracing(self.put, export.content)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="llm-sidecar-traces", daemon=True)
        self.thread.start()

    def put(self, trace: Trace, event: dict[str, Any]) -> None:
        """On the event loop, as a request ends: a length check and an append."""
        if len(self.queue) < self.limit:
            self.queue.append((trace, event))
        else:
            self.dropped += 1

    def run(self) -> None:
        while True:
            stopping = self.stopping.wait(INTERVAL)
            self.drain()
            if stopping:
                return

    def drain(self) -> None:
        if self.dropped:
            count, self.dropped = self.dropped, 0  # a race with put() only miscounts one drop
            log.warning("traces: %d requests were not traced (more than %d waited for export)", count, self.limit)
        while self.queue:
            trace, event = self.queue.popleft()
            try:
                self.emit(trace, event)
            except Exception:  # a bug here must not stop the thread, nor ever reach a request
                log.exception("traces: could not make the spans of request %s", event.get("id"))

    def emit(self, trace: Trace, event: dict[str, Any]) -> None:
        """The request's spans, finished, straight to the batch processor: they are made after the fact with
        their real times and the ids drawn on the hot path, which is all a tracer would add."""
        state = TraceState.from_header([trace.state]) if trace.state else None
        request = SpanContext(trace.trace_id, trace.span_id, False, SAMPLED, state)
        client = SpanContext(trace.trace_id, trace.parent, True, SAMPLED, state) if trace.parent else None
        for i, span in enumerate(spans_of(trace, event, self.content, self.cache)):
            made = ReadableSpan(
                span.name,
                context=request if i == 0 else SpanContext(trace.trace_id, span.span_id, False, SAMPLED, state),
                parent=client if i == 0 else request,  # the client's span is the request's parent, if it sent one
                resource=self.resource,
                attributes=span.attributes,
                kind=KINDS[span.kind],
                instrumentation_scope=self.scope,
                status=UNSET if span.error is None else Status(StatusCode.ERROR, span.error[:300]),
                start_time=span.start,
                end_time=span.end,
            )
            self.processor.on_end(made)

    async def close(self) -> None:
        """Stop the thread after its last turn, then send what is left, waiting at most STOP_WAIT seconds.

        On a daemon thread of its own, not the loop's executor: a collector that does not answer must not hold
        the process's exit (the executor is joined at exit, whatever the wait here)."""
        self.stopping.set()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def finish() -> None:
            try:
                self.thread.join()
                self.processor.shutdown()  # type: ignore[no-untyped-call]
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                    loop.call_soon_threadsafe(done.set)

        threading.Thread(target=finish, name="llm-sidecar-traces-stop", daemon=True).start()
        try:
            await asyncio.wait_for(done.wait(), STOP_WAIT)
        except TimeoutError:
            log.warning("traces: the last spans were not all sent within %gs of the stop", STOP_WAIT)
