from django.contrib.auth import views as auth_views
from django.shortcuts import render, resolve_url

from codedistiller_site.roles import CURATOR, EXPERT, has_role


def home(request):
    return render(request, "home.html")


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def get_default_redirect_url(self):
        # Without a ?next=: an expert's work is the scoring queues, the runs list is a curator's.
        user = self.request.user
        if has_role(user, EXPERT) and not has_role(user, CURATOR):
            return resolve_url("reviews")
        return super().get_default_redirect_url()
