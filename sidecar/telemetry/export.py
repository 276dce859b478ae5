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
import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace as api
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState

from sidecar.config.telemetry import Export

from .context import Trace, Tracing
from .spans import Where, spans_of

log = logging.getLogger("llm_sidecar")

QUEUE_MAX = 8192  # finished requests waiting for the thread; past it their traces are dropped
INTERVAL = 0.2  # seconds between the thread's turns
STOP_WAIT = 3.0  # seconds the sidecar's stop waits for the last spans to go
KINDS = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL}
SAMPLED = api.TraceFlags(api.TraceFlags.SAMPLED)


class Preset(IdGenerator):
    """Hands the SDK the ids drawn on the hot path; only the exporter's thread makes spans."""

    def __init__(self) -> None:
        self.span_id = 0
        self.trace_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id


class Held(logging.Filter):
    """Keeps the OTLP exporter's own lines (one per failed batch) out of the log, remembering the last."""

    def __init__(self) -> None:
        super().__init__()
        self.last = ""

    def filter(self, record: logging.LogRecord) -> bool:
        self.last = record.getMessage()[:300]
        return False


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
            self.held.last = f"{type(exc).__name__}: {exc}"[:300]
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE:
            self.lost += len(spans)
            if not self.failing:
                self.failing = True
                why = f" ({self.held.last})" if self.held.last else ""
                log.warning("traces: cannot export spans to %s%s; requests are not affected", self.where, why)
        elif self.failing:
            log.info("traces: exporting to %s again (%d spans lost meanwhile)", self.where, self.lost)
            self.failing, self.lost = False, 0
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
    """Owns the queue, the thread and the SDK's provider: `close()` stops them all."""

    def __init__(self, export: Export, version: str) -> None:
        self.export = export
        self.content = export.content
        self.queue: deque[tuple[Trace, dict[str, Any]]] = deque()
        self.dropped = 0  # traces dropped with the queue full, since the thread last said so
        self.cache: dict[str, Where] = {}
        self.ids = Preset()
        self.held = Held()
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").addFilter(self.held)
        self.provider = TracerProvider(resource=resource(version), sampler=ALWAYS_ON, id_generator=self.ids)
        self.watched = Watched(OTLPSpanExporter(endpoint=export.endpoint), export.shown, self.held)
        self.provider.add_span_processor(BatchSpanProcessor(self.watched))
        self.tracer = self.provider.get_tracer("llm-sidecar", version)
        self.tracing = Tracing(self.put, export.content)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="llm-sidecar-traces", daemon=True)
        self.thread.start()

    def put(self, trace: Trace, event: dict[str, Any]) -> None:
        """On the event loop, as a request ends: a length check and an append."""
        if len(self.queue) < QUEUE_MAX:
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
            log.warning("traces: %d requests were not traced (more than %d waited for export)", count, QUEUE_MAX)
        while self.queue:
            trace, event = self.queue.popleft()
            try:
                self.emit(trace, event)
            except Exception:  # a bug here must not stop the thread, nor ever reach a request
                log.exception("traces: could not make the spans of request %s", event.get("id"))

    def emit(self, trace: Trace, event: dict[str, Any]) -> None:
        state = TraceState.from_header([trace.state]) if trace.state else None
        ids = self.ids
        ids.trace_id = trace.trace_id
        for i, span in enumerate(spans_of(trace, event, self.content, self.cache)):
            if i == 0:
                parent = trace.parent  # the request's span: the client's span is its parent, if it sent one
                remote = True
            else:
                parent, remote = trace.span_id, False
            context = (
                api.set_span_in_context(
                    api.NonRecordingSpan(api.SpanContext(trace.trace_id, parent, remote, SAMPLED, state))
                )
                if parent is not None
                else Context()
            )
            ids.span_id = span.span_id
            made = self.tracer.start_span(
                span.name, context=context, kind=KINDS[span.kind], attributes=span.attributes, start_time=span.start
            )
            if span.error is not None:
                made.set_status(Status(StatusCode.ERROR, span.error[:300]))
            made.end(end_time=span.end)

    async def close(self) -> None:
        """Stop the thread after its last turn, then send what is left, waiting at most STOP_WAIT seconds."""
        self.stopping.set()

        def finish() -> None:
            self.thread.join()
            self.provider.shutdown()

        try:
            await asyncio.wait_for(asyncio.to_thread(finish), STOP_WAIT)
        except TimeoutError:
            log.warning("traces: the last spans were not all sent within %gs of the stop", STOP_WAIT)
