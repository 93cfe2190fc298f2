from django.urls import path

from codedistiller_site import ids  # noqa: F401  (registers the <id:> converter)
from reviews import views

urlpatterns = [
    path("", views.review_index, name="reviews"),
    path("queues/new/", views.queue_new, name="review_queue_new"),
    path("queues/<id:queue_id>/", views.queue_detail, name="review_queue"),
    path("queues/<id:queue_id>/answers.csv", views.queue_csv, name="review_queue_csv"),
    path("queues/<id:queue_id>/next/", views.queue_next, name="review_next"),
    path("items/<id:item_id>/", views.item_score, name="review_item"),
    path("items/<id:item_id>/skip/", views.item_skip, name="review_skip"),
    path("items/<id:item_id>/hold/", views.item_hold, name="review_hold"),
    path("items/<id:item_id>/draft/", views.item_draft, name="review_draft"),
    path("ab/", views.ab_compare, name="review_ab"),
    path("ab/results/", views.ab_results, name="review_ab_results"),
]
