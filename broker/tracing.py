"""Optional OpenTelemetry tracing: a span per request and per step, the trace id everywhere.

Off unless configured (`tracing:` in the configuration) and installed
(`pip install '.[otel]'`). When on, every HTTP request is a server span (continuing the
caller's W3C `traceparent`), each pipeline step (authn, context, policy, limits, issue,
persist, audit) a child span, and the trace id is bound to every log line and written in
every audit record of the request, so one id finds a request in traces, logs and the
audit trail. Spans are exported in batches on the SDK's own thread, never on the loop.
When off, `span()` is a shared no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from broker.config.reader import Reader
from broker.errors import ConfigError

__all__ = ["SpanScope", "Tracer", "TracingSettings", "parse_tracing"]

SpanScope = contextlib.AbstractContextManager[Any]
_NOOP: SpanScope = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """Where spans go.

    Attributes:
        exporter: `otlp` (OTLP over HTTP to `endpoint`) or `console` (JSON on stdout,
            for debugging).
        endpoint: The OTLP/HTTP traces endpoint (`otlp`).
        service_name: The `service.name` resource attribute.
        sample_ratio: Fraction of new traces sampled (a caller's sampled flag is kept).
    """

    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str | None = None
    service_name: str = "credential-broker"
    sample_ratio: float = 1.0


def parse_tracing(reader: Reader) -> TracingSettings:
    """Parse the `tracing:` section.

    Raises:
        ConfigError: Naming the file and the key.
    """
    exporter = reader.string("exporter", "otlp", choices=("otlp", "console"))
    settings = TracingSettings(
        exporter=exporter,  # type: ignore[arg-type]
        endpoint=reader.url("endpoint", https_only=False) if exporter == "otlp" else None,
        service_name=reader.string("service_name", "credential-broker"),
        sample_ratio=reader.number("sample_ratio", 1.0, minimum=0.0, maximum=1.0),
    )
    reader.finish()
    return settings


class Tracer:
    """Spans if tracing is configured, a no-op otherwise."""

    def __init__(self, settings: TracingSettings | None) -> None:
        """Set up the SDK when `settings` is given.

        Raises:
            ConfigError: Tracing is configured but OpenTelemetry is not installed.
        """
        self._tracer: Any = None
        self._provider: Any = None
        self._propagator: Any = None
        if settings is not None:
            self._setup(settings)

    @property
    def enabled(self) -> bool:
        """Whether spans are recorded."""
        return self._tracer is not None

    def _setup(self, settings: TracingSettings) -> None:
        try:
            from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - optional
            from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
            from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
                BatchSpanProcessor,
                ConsoleSpanExporter,
                SpanExporter,
            )
            from opentelemetry.sdk.trace.sampling import (  # noqa: PLC0415
                ParentBased,
                TraceIdRatioBased,
            )
            from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
                TraceContextTextMapPropagator,
            )
        except ImportError:
            raise ConfigError(
                "tracing is configured but OpenTelemetry is not installed: "
                "pip install 'spiffe-credential-broker[otel]'"
            ) from None
        exporter: SpanExporter
        if settings.exporter == "console":
            exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        else:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
                    OTLPSpanExporter,
                )
            except ImportError:
                raise ConfigError(
                    "tracing.exporter otlp needs opentelemetry-exporter-otlp-proto-http: "
                    "pip install 'spiffe-credential-broker[otel]'"
                ) from None
            exporter = OTLPSpanExporter(endpoint=settings.endpoint)
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        )
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("broker")
        self._propagator = TraceContextTextMapPropagator()

    def request(self, name: str, headers: Mapping[str, str]) -> SpanScope:
        """The server span of one HTTP request, continuing the caller's `traceparent`."""
        if self._tracer is None:
            return _NOOP
        from opentelemetry.trace import SpanKind  # noqa: PLC0415 - only when enabled

        context = self._propagator.extract(carrier=dict(headers))
        span: SpanScope = self._tracer.start_as_current_span(
            name, context=context, kind=SpanKind.SERVER
        )
        return span

    def span(self, name: str) -> SpanScope:
        """A child span of the current one (a no-op when tracing is off)."""
        if self._tracer is None:
            return _NOOP
        span: SpanScope = self._tracer.start_as_current_span(name)
        return span

    def trace_id(self) -> str | None:
        """The current trace id (32 hex digits), or None."""
        if self._tracer is None:
            return None
        from opentelemetry import trace  # noqa: PLC0415 - only when enabled

        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        if self._provider is not None:
            self._provider.shutdown()
