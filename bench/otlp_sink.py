"""A stand-in OpenTelemetry collector for the bench: `python -m bench.otlp_sink PORT` accepts OTLP/HTTP
exports (POST /v1/traces) on 127.0.0.1, counts their spans by service and name, and discards them.

The tracing phase points every pipeline process at it, so what the bench measures is the cost of tracing
in the pipeline (spans, context, export), not of a collector; its own CPU is left out. At SIGTERM it
prints one line of JSON: exports, bytes, spans, and the spans per `service span-name`.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Sink(BaseHTTPRequestHandler):
    requests = 0
    received = 0
    spans: Counter[str] = Counter()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Sink.requests += 1
        Sink.received += len(body)
        Sink.count_spans(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    @staticmethod
    def count_spans(body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "?")
            for scope_spans in resource_spans.scope_spans:
                Sink.spans.update(f"{service} {span.name}" for span in scope_spans.spans)

    def log_message(self, *_: object) -> None:
        pass


def main(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        summary = {
            "exports": Sink.requests,
            "bytes": Sink.received,
            "spans": sum(Sink.spans.values()),
            "by_name": dict(Sink.spans.most_common()),
        }
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
