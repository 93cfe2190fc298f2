from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from codedistiller_site import views
from library.mcp_views import mcp_endpoint

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("runs/", include("distill.urls")),
    path("library/", include("library.urls")),
    path("reviews/", include("reviews.urls")),
    path("api/", include("library.api_urls")),
    path("mcp", mcp_endpoint, name="mcp"),
    path("admin/", admin.site.urls),
]
