from django.urls import path, re_path

from codedistiller_site import ids  # noqa: F401  (registers the <id:> converter)
from library import api

urlpatterns = [
    path("", api.api_index, name="api_index"),
    path("openapi.json", api.openapi, name="api_openapi"),
    path("examples/", api.example_list, name="api_examples"),
    path("examples/<id:example_id>/", api.example_detail, name="api_example"),
    path("examples/<id:example_id>/versions/", api.example_versions, name="api_example_versions"),
    # Last: whatever else is asked under /api/ is a JSON 404, not the site's HTML page.
    re_path(r"^(?P<path>.*)$", api.not_found, name="api_not_found"),
]
