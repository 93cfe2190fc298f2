from django.urls import path

from library import export_views, views

urlpatterns = [
    path("", views.library_index, name="library"),
    path("export/", export_views.library_export, name="library_export"),
    path("approve/<int:run_id>/", views.run_approve, name="run_approve"),
    path("reject/<int:run_id>/", views.run_reject, name="run_reject"),
    path("<int:example_id>/", views.example_detail, name="example_detail"),
    path("<int:example_id>/retract/", views.example_retract, name="example_retract"),
    path("<int:example_id>/download/", export_views.example_download, name="example_download"),
    path("<int:example_id>/files/<path:path>", views.example_file, name="example_file"),
]
