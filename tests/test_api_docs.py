"""The interactive API docs load Swagger UI from the project's own static files, never from another origin."""

import re

from django.conf import settings
from django.contrib.staticfiles import finders


def test_the_api_docs_page_loads_swagger_ui_from_the_sites_own_pinned_files(client):
    page = client.get("/api/docs/").content.decode()

    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(asset.endswith("/swagger-ui-bundle.js") for asset in assets), assets
    assert "://" not in page, "the docs page names another origin"
    static = f"/{settings.STATIC_URL.strip('/')}/"
    for asset in assets:
        assert asset.startswith(static), asset
        assert finders.find(asset.removeprefix(static)), f"{asset} is not among the project's static files"
