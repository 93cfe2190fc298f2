from django.urls import path

from library import views

urlpatterns = [
    path("", views.review_index, name="reviews"),
]
