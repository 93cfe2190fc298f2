from django.urls import path

from distill import views

urlpatterns = [
    path("", views.run_list, name="runs"),
    path("new/", views.run_new, name="run_new"),
    path("<int:run_id>/", views.run_detail, name="run_detail"),
]
