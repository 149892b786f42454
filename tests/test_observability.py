"""docs/observability: Prometheus' configuration and alert rules pass promtool (their syntax and, with
alerts-test.yml, their behaviour), and the dashboard and the alerts name only metrics that /metrics exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from eventbus.metrics import PREFIX, REGISTRY
from eventbus.tests.scrape import scrape

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "observability"
# Series Prometheus makes itself for each scrape, which the rules may use too.
PROMETHEUS_SERIES = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: CI installs Debian's `prometheus` package (.ci/run)")
        pytest.skip("promtool is missing: apt-get install prometheus")
    return subprocess.run(["promtool", *args], cwd=DOCS, capture_output=True, text=True, check=False)


def test_the_alert_rules_pass_promtool_check():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_each_alert_fires_on_what_it_is_about_and_only_then():
    tested = promtool("test", "rules", "alerts-test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tests = yaml.safe_load((DOCS / "alerts-test.yml").read_text())["tests"]
    tested_alerts = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested_alerts == set(alert_names()), "every alert has a case where it fires"


def test_the_prometheus_configuration_passes_promtool_check():
    # Its syntax only: the token file is the compose secret, which exists in the container alone.
    checked = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load((DOCS / "alerts.yml").read_text())["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alert_rules()]


def dashboard_expressions() -> list[str]:
    panels = json.loads((DOCS / "dashboard.json").read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def metric_names(expression: str) -> set[str]:
    """The series names a PromQL expression selects: its identifiers, less functions, keywords and labels."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # strings
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)  # label matchers, ranges
    bare = GROUPING.sub(" ", bare)  # the labels of by (...), on (...)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", bare):
        if not bare[match.end() :].lstrip().startswith("(") and match.group().lower() not in KEYWORDS:
            names.add(match.group())
    return names


def test_metric_names_are_read_from_promql():
    expression = 'sum by (handler, le) (rate(a_bucket{outcome=~"x|y"}[5m])) / on (handler) b_total > bool 0.1'
    assert metric_names(expression) == {"a_bucket", "b_total"}
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m]))) > 10 or up{job="j"} == 0') == {
        "c_bucket",
        "up",
    }


def series_names(families) -> set[str]:
    """The names of the series a family's samples carry, by its type; an untyped family counts as a gauge."""
    return {f"{family.name}{suffix}" for family in families for suffix in SUFFIXES.get(family.type, ("",))}


@pytest.fixture
def exported(client, settings) -> set[str]:
    """Every series name /metrics exports: the health figures from a live scrape, the pipeline's own metrics from
    their definitions (a scrape in multiprocess mode lists only those observed so far)."""
    return series_names(scrape(client, settings).families) | series_names(REGISTRY.collect())


@pytest.mark.django_db
def test_the_dashboard_and_the_alerts_name_only_metrics_the_app_exports(exported):
    referenced = {
        source: metric_names(expression)
        for source, expression in [
            *((f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()),
            *((f"dashboard: {expr}", expr) for expr in dashboard_expressions()),
        ]
    }
    assert all(referenced.values()), "every expression selects some series"
    unknown = {source: names - exported - PROMETHEUS_SERIES for source, names in referenced.items()}
    assert not {source: names for source, names in unknown.items() if names}
    assert {"orderpipe_queue_consumers", "orderpipe_outbox_lag_seconds"} <= exported, "the scrape was read"


def test_the_dashboard_shows_every_metric_of_the_pipeline():
    shown = {name for expression in dashboard_expressions() for name in metric_names(expression)}
    for family in REGISTRY.collect():
        assert {f"{family.name}{suffix}" for suffix in SUFFIXES[family.type]} & shown, family.name
        assert family.name.startswith(PREFIX)


def test_the_dashboard_reads_the_provisioned_data_source():
    datasources = yaml.safe_load((DOCS / "grafana" / "datasources.yml").read_text())["datasources"]
    prometheus = next(source for source in datasources if source["type"] == "prometheus")
    panels = json.loads((DOCS / "dashboard.json").read_text())["panels"]
    graphs = [panel for panel in panels if panel["type"] != "row"]
    assert graphs and all(panel["datasource"]["uid"] == prometheus["uid"] for panel in graphs)
    assert prometheus["url"] == "http://prometheus:9090"
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
