"""A stand-in OpenTelemetry collector for the bench: `python -m bench.otlp_sink PORT` accepts OTLP/HTTP
exports (POST /v1/traces) on 127.0.0.1 and discards them, counting requests and bytes.

The tracing phase points every pipeline process at it, so what the bench measures is the cost of tracing
in the pipeline (spans, context, export), not of a collector; its own CPU is left out.
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    requests = 0
    received = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Sink.requests += 1
        Sink.received += len(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def main(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), Sink)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        print(f"otlp sink: {Sink.requests} exports, {Sink.received} bytes", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
