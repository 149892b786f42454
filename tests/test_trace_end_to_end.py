"""One trace across the pipeline's processes: an order placed with a `traceparent` header, followed through
web, relay, inventory and payments, the orders saga and the capture, as each process's OTLP exporter reports
it to a small receiver in the test. On a stack of its own (servers, database and processes, with tracing on)."""

from __future__ import annotations

import gzip
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from devstack import pipeline
from devstack.config import StackConfig
from devstack.stack import Stack, expected_consumers
from tests.harness import own_run_dir, ports_block, stack_db, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

TRACE_ID = uuid.uuid4().hex
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass(frozen=True)
class Span:
    """A span as an exporter sent it, with the process (service.instance.id, one per process) that ended it."""

    service: str
    process: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]


class OtlpReceiver(ThreadingHTTPServer):
    """A tiny OTLP/HTTP (protobuf) trace receiver on 127.0.0.1 that keeps what it is sent."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ExportHandler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [span for span in self.spans if span.trace_id == trace_id]


class _ExportHandler(BaseHTTPRequestHandler):
    server: OtlpReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {item.key: item.value.string_value for item in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [
                    Span(
                        resource["service.name"],
                        resource["service.instance.id"],
                        span.name,
                        span.kind,
                        span.trace_id.hex(),
                        span.span_id.hex(),
                        span.parent_span_id.hex(),
                        tuple(link.span_id.hex() for link in span.links),
                    )
                    for span in scope_spans.spans
                ]
        with self.server.lock:
            self.server.spans += received
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def traced_stack(receiver: OtlpReceiver) -> Iterator[Stack]:
    """`make run`'s processes (web, a worker per service, the relay) with tracing on, exporting to `receiver`, on
    servers and a database of their own, on the database this test run uses."""
    ports = ports_block()
    config = StackConfig(
        web_port=ports["WEB_PORT"], amqp_port=ports["RABBITMQ_PORT"], management_port=ports["RABBITMQ_MANAGEMENT_PORT"],
        redis_port=ports["REDIS_PORT"], postgres_port=ports["POSTGRES_PORT"],
        db=stack_db(), run_dir=own_run_dir("trace"),
    )  # fmt: skip
    tracing = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "200"}  # fmt: skip
    stack = Stack(config, fresh=True, overrides={**tracing, "CACHE_KEY_PREFIX": "trace-test"})
    try:
        stack.claim_run_dir()
        stack.start_servers()
        stack.migrate()
        stack.manage("seed_demo")
        services = [service.name for service in pipeline.services()]
        stack.start_web()
        for name in services:
            stack.start_worker(name)
        stack.start_relay(poll=0.5)
        stack.wait_for_port("web", config.web_port)
        stack.wait_consuming(expected_consumers(services))
        # The orders catalogue learns the demo products from their ProductChanged events, through the pipeline.
        try:
            wait_for(
                lambda: catalogue_size(config) >= 10, timeout=120, what="the demo products in the orders catalogue"
            )
        except AssertionError as error:  # the run directory goes with the teardown: keep what its processes said
            logs = "".join(f"\n--- {name}\n{stack.processes.log_tail(name, 25)}" for name in stack.processes.procs)
            raise AssertionError(f"{error} (catalogue: {catalogue_size(config)}){logs}") from None
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(config.run_dir, ignore_errors=True)


def catalogue_size(config: StackConfig) -> int:
    """Products in the stack's own orders catalogue, read straight from its database."""
    query = "SELECT COUNT(*) FROM orders_catalogproduct"
    if config.db == "postgres":
        with psycopg.connect(config.database_url) as database:
            return database.execute(query).fetchone()[0]
    with closing(sqlite3.connect(config.run_dir / "db.sqlite3")) as database:
        return database.execute(query).fetchone()[0]


def ancestors(span: Span, by_id: dict[str, Span]) -> list[Span]:
    """`span` and its parents up to the trace's first span in this trace (the caller's is not among them)."""
    chain = [span]
    while chain[-1].parent_id in by_id:
        chain.append(by_id[chain[-1].parent_id])
    return chain


def collapsed(services: list[str]) -> list[str]:
    return [name for i, name in enumerate(services) if i == 0 or services[i - 1] != name]


def test_an_orders_trace_runs_from_the_callers_request_through_every_hop_to_the_capture(traced_stack, receiver):
    # Given the whole pipeline, tracing to the receiver; when a caller places an order inside its own trace
    web = f"http://127.0.0.1:{traced_stack.config.web_port}"
    order = {"customer_email": "trace@example.com", "payment_token": "tok_visa",
             "items": [{"product_id": "P001", "quantity": 1}]}  # fmt: skip
    response = requests.post(f"{web}/api/orders/", json=order, timeout=30,
                             headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})  # fmt: skip
    assert response.status_code == 201, response.text
    order_id = response.json()["id"]

    # Then the order is confirmed, and the capture's span reaches the receiver in the caller's trace
    wait_for(lambda: requests.get(f"{web}/api/orders/{order_id}/", timeout=10).json()["status"] == "confirmed",
             timeout=90, what="the order to be confirmed")  # fmt: skip

    def capture() -> Span | None:
        spans = receiver.trace(TRACE_ID)
        return next((s for s in spans if (s.service, s.name) == ("payments", "process orders.OrderConfirmed.v1")), None)

    capture_span = wait_for(capture, timeout=60, what="the capture's span")
    time.sleep(1)  # the relay's and the orders worker's last batches of spans
    spans = receiver.trace(TRACE_ID)
    by_id = {span.span_id: span for span in spans}
    parents = {s.span_id: by_id[s.parent_id].name if s.parent_id in by_id else s.parent_id for s in spans}
    summary = "\n".join(sorted(f"{s.service:9} {s.name} <- {parents[s.span_id]}" for s in spans))

    # One trace, whose first span is the web request's, a child of the caller's span; no span's parent is missing
    (request,) = [span for span in spans if span.parent_id not in by_id]
    assert (request.service, request.kind, request.parent_id) == ("web", ProtoSpan.SPAN_KIND_SERVER, CALLER_SPAN)
    assert request.name.startswith("POST"), summary
    assert {"web", "relay", "inventory", "payments", "orders"} <= {span.service for span in spans}, summary
    assert len({span.process for span in spans}) >= 5, summary

    # The capture's way up: payments <- the orders saga <- a leg (inventory or payments) <- the web request
    path = ancestors(capture_span, by_id)
    assert path[-1] == request
    way = collapsed([span.service for span in path])
    assert way[:2] == ["payments", "orders"] and way[-1] == "web" and way[2] in ("inventory", "payments"), summary
    created = [span for span in path if span.name.startswith("create ")]
    assert [span.name for span in created] == [
        "create orders.OrderConfirmed.v1",
        f"create {'inventory.StockReserved.v1' if way[2] == 'inventory' else 'payments.PaymentAuthorized.v1'}",
        "create orders.OrderPlaced.v1",
    ], summary

    # Each event written on that way went out through the relay, in a span that is the write's child
    for write in created:
        event_type = write.name.removeprefix("create ")
        assert any(s.service == "relay" and s.name == f"publish {event_type}" and s.parent_id == write.span_id
                   for s in spans), f"no relay span under {write.name}\n{summary}"  # fmt: skip

    # Both legs handled the order's OrderPlaced in its trace, each intake receiving it as a child of its write
    placed = created[-1]
    for service in ("inventory", "payments"):
        receive = [s for s in spans if (s.service, s.name) == (service, "receive orders.OrderPlaced.v1")]
        assert [s.parent_id for s in receive] == [placed.span_id], summary
        handled = [s for s in spans if (s.service, s.name) == (service, "process orders.OrderPlaced.v1")]
        assert len(handled) == 1 and placed in ancestors(handled[0], by_id), summary
    # And the saga heard from both legs in the same trace
    saga = {s.name for s in spans if s.service == "orders" and s.name.startswith("process ")}
    assert {"process inventory.StockReserved.v1", "process payments.PaymentAuthorized.v1"} <= saga, summary
