"""A new subscribing service is an app with its Subscriber and handlers plus one line in settings: tests/shipping,
installed by tests/settings_shipping.py, gets its broker user, queues, bindings and worker and receives events.

The scenario runs in a pytest of its own, since this process's registry must not hold shipping: the suite's
fixtures (broker_setup, a worker per service, the relay) start from the registry as they always do."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus.identities import broker_password
from orderproj.settings.base import env_prefixed
from tests.harness import ROOT

SCENARIO = ROOT / "tests" / "shipping" / "scenario.py"


def own_database(url: str) -> str:
    """The same PostgreSQL server, another database: the scenario's test database must not be the suite's.
    (On SQLite the test settings name the file after TEST_RUN_ID.)"""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"{parts.path}_shipping")) if parts.scheme.startswith("postgres") else url


@pytest.mark.integration
def test_an_app_with_a_subscriber_receives_events_on_a_worker_of_its_own(tmp_path):
    run = f"shipping-{os.getpid()}"
    metrics = tmp_path / "metrics"  # its processes' metrics stay out of this run's /metrics
    metrics.mkdir()
    env = {**os.environ, "TEST_RUN_ID": run, "CACHE_KEY_PREFIX": f"test-{run}",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics)}  # fmt: skip
    if "DATABASE_URL" in env:
        env["DATABASE_URL"] = own_database(env["DATABASE_URL"])

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--ds", "tests.settings_shipping", "-p", "no:cacheprovider", "-q", SCENARIO],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=270, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_a_new_services_broker_password_is_read_by_its_name(monkeypatch, settings):
    monkeypatch.setenv("BROKER_PASSWORD_SHIPPING", "pw-shipping")
    settings.BROKER_PASSWORDS = env_prefixed("BROKER_PASSWORD_")
    settings.BROKER_PASSWORD_FILE = None

    assert broker_password("shipping") == "pw-shipping"
