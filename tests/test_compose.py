"""docker-compose.yml and .env.example checked against the code they run; no Docker engine needed."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.urls import reverse

from devstack import pipeline
from eventbus.topology import task_queues

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SETTINGS_FILES = sorted((ROOT / "orderproj" / "settings").glob("*.py"))

APP_SERVICES = ("migrate", "web", "worker-orders", "worker-inventory", "worker-payments", "relay", "beat", "flower")
OBSERVABILITY = ("jaeger", "prometheus", "grafana")
SERVICES = ("rabbitmq", "postgres", "redis", *APP_SERVICES, *OBSERVABILITY)
# Variables the app containers get that something other than orderproj/settings reads.
NON_SETTINGS_VARIABLES = {
    "DJANGO_SETTINGS_MODULE": "Django: which settings module to load",
    "FLOWER_BASIC_AUTH": "Flower reads it itself (its FLOWER_ option variables)",
    "ADMIN_PASSWORD": "the migrate service's command hands it to `manage.py ensure_admin`",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client reads it itself (eventbus.metrics)",
    "OTEL_SERVICE_NAME": "the OpenTelemetry SDK reads it itself (eventbus.telemetry)",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "the OpenTelemetry SDK reads it itself (eventbus.telemetry)",
}
BROKER_PASSWORDS = ("BROKER_PASSWORD_OPS", "BROKER_PASSWORD_ORDERS", "BROKER_PASSWORD_INVENTORY",
                    "BROKER_PASSWORD_PAYMENTS")  # fmt: skip
SECRETS = ("DJANGO_SECRET_KEY", "POSTGRES_PASSWORD", "RABBITMQ_DEFAULT_PASS", "ADMIN_PASSWORD", "FLOWER_BASIC_AUTH",
           "EVENTBUS_SEAL_KEY", "METRICS_TOKEN", *BROKER_PASSWORDS)  # fmt: skip
# The broker user each app container connects as (eventbus.identities); the relay names none of its own.
BROKER_USERS = {"migrate": "ops", "web": "ops", "beat": "ops", "flower": "ops", "worker-orders": "orders",
                "worker-inventory": "inventory", "worker-payments": "payments", "relay": None}  # fmt: skip
CELERY_WORKER = ["celery", "-A", "orderproj", "worker"]
PUBLISHED = {"web": ["8000"], "flower": ["5555"], "rabbitmq": ["5672", "15672"], "jaeger": ["16686", "4317", "4318"],
             "prometheus": ["9090"], "grafana": ["3000"]}  # fmt: skip
OBSERVABILITY_DOCS = ROOT / "docs" / "observability"

ENV_READ = re.compile(
    r"""\b(?:os\.environ\.get|env_bool|env_int|env_duration|env_rate|required|_port|_choice|_count)\(\s*["']([A-Z][A-Z0-9_]*)["']"""
)
# Settings that read every variable of a prefix (BROKER_PASSWORD_<USER>).
PREFIX_READ = re.compile(r"""\benv_prefixed\(\s*["']([A-Z][A-Z0-9_]*)["']""")
REQUIRED_READ = re.compile(r"""\brequired\(\s*["']([A-Z][A-Z0-9_]*)["']""")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")


def variables_read(paths: list[Path], pattern: re.Pattern[str] = ENV_READ) -> set[str]:
    return {name for path in paths for name in pattern.findall(path.read_text())}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def argv(service: dict[str, Any]) -> list[str]:
    """The command as the container gets it: compose interpolates `${...}` first, then splits."""
    command = INTERPOLATION.sub(lambda match: f"<{match[1]}>", service["command"])
    return shlex.split(command)


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_the_file_parses_and_has_every_service(services):
    assert set(SERVICES) <= set(services)


def test_web_and_every_worker_reuse_one_anchored_definition(compose, services):
    # Given the YAML nodes, where an alias is the very node its anchor names
    root = yaml.compose(COMPOSE.read_text())
    nodes = {key.value: value for key, value in root.value}
    anchor = nodes["x-app"]
    service_nodes = {key.value: value for key, value in nodes["services"].value}

    for name in APP_SERVICES:
        merged = [value for key, value in service_nodes[name].value if key.value == "<<"]
        assert merged == [anchor], f"{name} does not merge the x-app anchor"
        assert services[name]["build"] == compose["x-app"]["build"]
        assert services[name]["image"] == compose["x-app"]["image"]


def test_rabbitmq_has_its_own_administrator_and_vhost_and_each_process_a_user_of_its_own(services):
    env = services["rabbitmq"]["environment"]
    assert "guest" not in str(env["RABBITMQ_DEFAULT_USER"])
    assert env["RABBITMQ_DEFAULT_USER"].startswith("${RABBITMQ_DEFAULT_USER:?")
    assert env["RABBITMQ_DEFAULT_PASS"].startswith("${RABBITMQ_DEFAULT_PASS:?")
    assert env["RABBITMQ_DEFAULT_VHOST"] not in ("", "/")
    assert env["RABBITMQ_DEFAULT_VHOST"].startswith("${RABBITMQ_DEFAULT_VHOST")

    assert set(BROKER_USERS) == set(APP_SERVICES)
    for name, user in BROKER_USERS.items():
        broker = services[name]["environment"]["CELERY_BROKER_URL"]
        assert broker.endswith("@rabbitmq:5672/${RABBITMQ_DEFAULT_VHOST:-orderpipe}" if user else
                               "amqp://rabbitmq:5672/${RABBITMQ_DEFAULT_VHOST:-orderpipe}")  # fmt: skip
        if user:
            assert broker.startswith(f"amqp://{user}:${{BROKER_PASSWORD_{user.upper()}:?"), name


def test_only_the_migrate_service_holds_the_administrators_and_every_users_password(services):
    migrate = services["migrate"]["environment"]
    assert migrate["BROKER_ADMIN_URL"].startswith("amqp://${RABBITMQ_DEFAULT_USER:?")
    assert all(migrate[variable].startswith(f"${{{variable}:?") for variable in BROKER_PASSWORDS)
    assert "manage.py broker_setup" in " ".join(argv(services["migrate"]))
    for name in APP_SERVICES:
        if name == "migrate":
            continue
        held = {variable for variable in (*BROKER_PASSWORDS, "RABBITMQ_DEFAULT_PASS")
                if variable in str(services[name]["environment"]) or variable in services[name]["command"]}  # fmt: skip
        own = {f"BROKER_PASSWORD_{BROKER_USERS[name].upper()}"} if BROKER_USERS[name] else set()
        if name == "relay":  # it publishes each producer's events as that producer
            own = {f"BROKER_PASSWORD_{service.upper()}" for service in ("orders", "inventory", "payments")}
        assert held == own, name
    credentials = services["relay"]["environment"]["EVENTBUS_PUBLISHER_CREDENTIALS"]
    assert [item.split(":", 1)[0] for item in credentials.split(",")] == ["orders", "inventory", "payments"]


def test_app_services_pass_only_variables_that_something_reads(services):
    read = variables_read(SETTINGS_FILES)
    prefixes = tuple(variables_read(SETTINGS_FILES, PREFIX_READ))
    for name in APP_SERVICES:
        unknown = {
            variable
            for variable in set(services[name]["environment"]) - read - set(NON_SETTINGS_VARIABLES)
            if not variable.startswith(prefixes)
        }
        assert not unknown, f"{name} passes variables nothing reads: {sorted(unknown)}"


def test_app_services_get_every_variable_production_requires(services):
    required = variables_read([ROOT / "orderproj" / "settings" / "production.py"], REQUIRED_READ)
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"} <= required
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "orderproj.settings.production"
        missing = {variable for variable in required if not env.get(variable)}
        assert not missing, f"{name} lacks {sorted(missing)}"


def test_compose_refuses_to_start_without_a_secret():
    references = INTERPOLATION.findall(COMPOSE.read_text())
    for secret in SECRETS:
        modifiers = {modifier for variable, modifier in references if variable == secret}
        assert modifiers, f"{secret} is not used"
        assert all(modifier.startswith(":?") for modifier in modifiers), f"{secret} has a default somewhere"


def read_procfile() -> dict[str, list[str]]:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.strip() and line[0] != "#"]
    return {name: shlex.split(command) for name, command in (line.split(":", 1) for line in lines)}


def test_the_procfile_is_the_one_the_subscription_registry_implies():
    assert (ROOT / "Procfile").read_text() == pipeline.procfile(), "regenerate: python -m devstack procfile > Procfile"


def test_compose_runs_every_procfile_process(services):
    # Given the Procfile `make run` starts; web and Flower differ only in how they listen
    procfile = read_procfile()
    workers = {name: args for name, args in procfile.items() if args[:4] == CELERY_WORKER}
    others = {name: args for name, args in procfile.items() if name not in workers and name not in ("web", "flower")}

    compose_workers = {
        name.removeprefix("worker-"): argv(service) for name, service in services.items() if name.startswith("worker-")
    }
    assert set(compose_workers) == set(workers)
    for name, args in compose_workers.items():
        assert args[:4] == CELERY_WORKER
        assert option(args, "-Q") == option(workers[name], "-Q"), name
        assert option(args, "-n") == option(workers[name], "-n"), name
    for name, args in others.items():
        assert argv(services[name]) == args, name

    consumed = {queue for args in compose_workers.values() for queue in option(args, "-Q").split(",")}
    assert {queue.name for queue in task_queues()} <= consumed


def test_one_shot_migrate_runs_first_and_the_rest_waits_for_healthy_servers(services):
    command = " ".join(argv(services["migrate"]))
    assert "manage.py migrate" in command
    assert "manage.py seed_demo" in command
    assert "manage.py broker_setup" in command
    for name in ("rabbitmq", "postgres", "redis"):
        assert "healthcheck" in services[name], name
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert {depends[server]["condition"] for server in ("rabbitmq", "postgres", "redis")} == {"service_healthy"}
        if name != "migrate":
            assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_web_and_flower_listen_in_the_container_and_flower_reads_the_management_api(services):
    assert argv(services["web"])[:3] == ["gunicorn", "orderproj.wsgi:application", "--bind"]
    assert option(argv(services["web"]), "--bind") == "0.0.0.0:8000"
    flower = argv(services["flower"])
    assert flower[:4] == ["celery", "-A", "orderproj", "flower"]
    broker_api = next(arg.removeprefix("--broker-api=") for arg in flower if arg.startswith("--broker-api="))
    assert broker_api == "http://rabbitmq:15672/api/"  # as the user of its broker URL, ops


def test_published_ports_listen_on_loopback_only(services):
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), f"{name} publishes {mapping} beyond loopback"
    for name, container_ports in PUBLISHED.items():
        assert [mapping.rsplit(":", 1)[1] for mapping in services[name]["ports"]] == container_ports


def test_data_lives_in_named_volumes(compose, services):
    for name in ("rabbitmq", "postgres", "redis"):
        (mount,) = services[name]["volumes"]
        assert mount.split(":", 1)[0] in compose["volumes"], name


def test_env_example_lists_every_variable_and_leaves_secrets_empty():
    # Given `NAME=value` and commented-out `# NAME=value` lines
    lines = dict(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))

    read = variables_read([*SETTINGS_FILES, ROOT / "devstack" / "config.py"])
    interpolated = {variable for variable, _ in INTERPOLATION.findall(COMPOSE.read_text())}
    missing = (read | interpolated | set(NON_SETTINGS_VARIABLES)) - set(lines)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for secret in SECRETS:
        assert lines[secret] == "", f"{secret} has a value in .env.example"
    assert lines["RABBITMQ_DEFAULT_USER"] not in ("", "guest")


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A service's files from the checkout: target in the container -> the file here."""
    mounts = [mount.split(":") for mount in service.get("volumes", []) if mount.startswith("./")]
    return {target: ROOT / source for source, target, *_ in mounts}


def test_every_app_process_keeps_its_metrics_in_one_shared_volume(compose, services):
    # Given the directory prometheus_client's multiprocess mode writes to, and the volume every app container mounts
    directory = compose["x-app"]["environment"]["PROMETHEUS_MULTIPROC_DIR"]

    for name in APP_SERVICES:
        assert services[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"] == directory, name
        assert f"app-metrics:{directory}" in services[name]["volumes"], name
    assert "app-metrics" in compose["volumes"]
    # A new volume takes the owner of the image's directory: the app's user must be able to write there.
    assert f"chown app:app {directory}" in (ROOT / "Dockerfile").read_text()


def test_prometheus_scrapes_the_web_process_with_the_metrics_token(compose, services):
    config = yaml.safe_load((OBSERVABILITY_DOCS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == reverse("metrics")
    web_port = option(argv(services["web"]), "--bind").rsplit(":", 1)[1]
    assert job["static_configs"] == [{"targets": [f"web:{web_port}"]}]
    # The token reaches Prometheus as a secret file, the web process as METRICS_TOKEN, both from .env.
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    assert services["prometheus"]["secrets"] == ["metrics_token"]
    assert compose["secrets"]["metrics_token"] == {"environment": "METRICS_TOKEN"}
    assert services["web"]["environment"]["METRICS_TOKEN"].startswith("${METRICS_TOKEN:?")
    # Prometheus asks for Host web:8000, which Django refuses unless it is an allowed host.
    allowed_by_default = services["web"]["environment"]["DJANGO_ALLOWED_HOSTS"].split(":-", 1)[1].rstrip("}")
    assert "web" in allowed_by_default.split(",")
    mounts = bind_mounts(services["prometheus"])
    assert mounts["/etc/prometheus/prometheus.yml"] == OBSERVABILITY_DOCS / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule_file}"] == OBSERVABILITY_DOCS / rule_file


def test_grafana_gets_its_data_sources_and_the_dashboard_from_the_docs(services):
    mounts = bind_mounts(services["grafana"])
    provisioning = "/etc/grafana/provisioning"
    assert mounts[f"{provisioning}/datasources/orderpipe.yml"] == OBSERVABILITY_DOCS / "grafana" / "datasources.yml"
    assert mounts[f"{provisioning}/dashboards/orderpipe.yml"] == OBSERVABILITY_DOCS / "grafana" / "dashboards.yml"
    (provider,) = yaml.safe_load((OBSERVABILITY_DOCS / "grafana" / "dashboards.yml").read_text())["providers"]
    assert mounts[f"{provider['options']['path']}/orderpipe.json"] == OBSERVABILITY_DOCS / "dashboard.json"
    # Each data source names a compose service on the port it listens on.
    sources = yaml.safe_load((OBSERVABILITY_DOCS / "grafana" / "datasources.yml").read_text())["datasources"]
    assert {source["type"]: source["url"] for source in sources} == {
        "prometheus": "http://prometheus:9090",
        "jaeger": "http://jaeger:16686",
    }
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${ADMIN_PASSWORD:?")


def test_jaeger_is_the_all_in_one_image_receiving_otlp(services):
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"


def test_every_file_compose_mounts_from_the_checkout_exists(services):
    for name, service in services.items():
        for target, source in bind_mounts(service).items():
            assert source.is_file(), f"{name} mounts {source} at {target}, which does not exist"
