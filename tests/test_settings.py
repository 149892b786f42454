"""Production settings: secrets only from the environment, and a clean `check --deploy`."""

import subprocess
import sys

from tests.harness import ROOT

PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "orderproj.settings.production",
    "DJANGO_SECRET_KEY": "x7-Lq2vN9pR4sT8wY1zB5cF3hJ6kM0nQ-aDgEiKoUrXy3Gm8Vt2Hw5Ns",
    "DJANGO_ALLOWED_HOSTS": "orders.example.com",
    "DATABASE_URL": "postgres://orders:secret@db.example.com:5432/orders",
    "CELERY_BROKER_URL": "amqp://orders:secret@mq.example.com:5672/orders",
    "REDIS_URL": "redis://cache.example.com:6379/0",
    "RABBITMQ_MANAGEMENT_URL": "https://mq.example.com:15671",
    "EVENTBUS_SEAL_KEY": "k3-Vt8Hw2Ns5Gm0Lq7Yx4Bc9Rf1Jd6Pz",
}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_check_deploy_reports_nothing_when_given_the_secrets():
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_each_secret():
    for name in PRODUCTION_ENV.keys() - {"DJANGO_SETTINGS_MODULE"}:
        env = {key: value for key, value in PRODUCTION_ENV.items() if key != name}
        result = manage("check", env=env)
        assert result.returncode != 0, f"started without {name}"
        assert f"{name} must be set in production" in result.stderr
