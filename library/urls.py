from django.urls import path

from codedistiller_site import ids  # noqa: F401  (registers the <id:> converter)
from library import export_views, health_views, views

urlpatterns = [
    path("", views.library_index, name="library"),
    path("export/", export_views.library_export, name="library_export"),
    path("health/", health_views.library_health, name="library_health"),
    path("approve/<id:run_id>/", views.run_approve, name="run_approve"),
    path("reject/<id:run_id>/", views.run_reject, name="run_reject"),
    path("<id:example_id>/", views.example_detail, name="example_detail"),
    path("<id:example_id>/retract/", views.example_retract, name="example_retract"),
    path("<id:example_id>/repair/", health_views.example_repair, name="example_repair"),
    path("<id:example_id>/checks/<id:check_id>/", health_views.example_check_detail, name="example_check"),
    path("<id:example_id>/download/", export_views.example_download, name="example_download"),
    path("<id:example_id>/files/<path:path>", views.example_file, name="example_file"),
]
