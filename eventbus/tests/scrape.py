"""Reading /metrics as Prometheus does, for tests: every sample by name and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

TOKEN = "scrape-token"


class Samples:
    """One scrape's samples."""

    def __init__(self, text: str) -> None:
        self.families = list(text_string_to_metric_families(text))
        self.values = {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in self.families
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """The value of the sample `name` with exactly `labels`; 0 when there is none (yet)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)


def scrape(client, settings) -> Samples:
    """GET /metrics with the bearer token, the management API refusing at once (its figures do not matter here)."""
    settings.METRICS_TOKEN = TOKEN
    settings.RABBITMQ_MANAGEMENT_URL = "http://127.0.0.1:9"
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    return Samples(response.content.decode())
