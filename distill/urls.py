from django.urls import path

from codedistiller_site import ids  # noqa: F401  (registers the <id:> converter)
from distill.views import iterations, runs

urlpatterns = [
    path("", runs.run_list, name="runs"),
    path("new/", runs.run_new, name="run_new"),
    path("<id:run_id>/", runs.run_detail, name="run_detail"),
    path("<id:run_id>/cancel/", runs.run_cancel, name="run_cancel"),
    path("<id:run_id>/retry/", runs.run_retry, name="run_retry"),
    path("<id:run_id>/rerun/", runs.run_rerun, name="run_rerun"),
    path("<id:run_id>/download/", runs.run_download, name="run_download"),
    path("<id:run_id>/report/", runs.run_report, name="run_report"),
    path("<id:run_id>/iterations/<id:number>/", iterations.iteration_detail, name="iteration_detail"),
    path(
        "<id:run_id>/iterations/<id:number>/files/<path:path>",
        iterations.iteration_file,
        name="iteration_file",
    ),
    path("<id:run_id>/diff/", iterations.run_diff, name="run_diff"),
]
