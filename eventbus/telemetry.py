"""Tracing on or off for each process of the pipeline, from the standard OTEL_* variables.

OTEL_TRACES_EXPORTER (read by the settings) names the exporters: `otlp`, OTLP over HTTP (protobuf) to
OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318); `console`, a JSON line per span on standard
output; both, comma-separated; or `none`, the default, and then nothing imports the SDK or instruments
anything (eventbus.telemetry_sdk does, with tracing on). Each process is a service of its own:
OTEL_SERVICE_NAME, else the name its entry point gives. Entry points: orderproj/wsgi.py (web), the relay
command, and the Celery signals below (workers, beat). A prefork worker sets up in its main process, which
runs the intake, before its pool forks; each pool process then opens an export pipeline of its own.
"""

from __future__ import annotations

from typing import Any

from celery.signals import beat_init, worker_init, worker_process_init, worker_process_shutdown
from django.conf import settings

from eventbus import tracing

_on = False


def configure(service: str) -> bool:
    """Trace this process as `service` when OTEL_TRACES_EXPORTER names an exporter; return whether it is traced.
    Call it before the process serves anything (web: before the WSGI application loads its middleware)."""
    global _on
    if settings.OTEL_TRACES_EXPORTER and not _on:
        from eventbus import telemetry_sdk

        tracer, follows_parent = telemetry_sdk.set_up(service, settings.OTEL_TRACES_EXPORTER)
        tracing.start(tracer, follows_parent=follows_parent)
        _on = True
    return _on


@worker_init.connect
def _trace_worker(sender: Any = None, **_: Any) -> None:
    configure(str(sender.hostname).split("@", 1)[0])  # the node name, `<service>@<host>`


@beat_init.connect
def _trace_beat(**_: Any) -> None:
    configure("beat")


@worker_process_init.connect
def _trace_pool_process(**_: Any) -> None:
    if _on:
        from eventbus import telemetry_sdk

        telemetry_sdk.reopen()


@worker_process_shutdown.connect
def _flush_pool_process(**_: Any) -> None:
    if _on:
        from eventbus import telemetry_sdk

        telemetry_sdk.flush()
