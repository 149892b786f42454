"""URL routes: admin, JSON API, OpenAPI schema and docs, liveness."""

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from eventbus.views import health_page, metrics


def healthz(_request: HttpRequest) -> JsonResponse:
    """Liveness: the web process answers. Dependencies are reported on the health page."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("orders.urls")),
    path("api/", include("inventory.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
    path("ops/health/", health_page, name="pipeline-health"),
    path("metrics", metrics, name="metrics"),
]
