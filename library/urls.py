from django.urls import path

from library import views

urlpatterns = [
    path("", views.library_index, name="library"),
]
