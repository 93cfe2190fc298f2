"""The two roles of the site, held as Django groups that a data migration creates.

curator: submits runs, acts on them, approves or rejects examples, manages review queues.
expert:  scores examples.
Every logged-in user may read runs and the library; superusers hold every role.
"""

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied

CURATOR = "curator"
EXPERT = "expert"
ROLES = (CURATOR, EXPERT)


def has_role(user, role: str) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    # Cached on the user object: a page asks several times per request.
    cached = getattr(user, "_role_names", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._role_names = cached
    return role in cached


def role_required(role: str):
    """Anonymous visitors are sent to log in; a logged-in user without the role gets 403."""

    def decorator(view):
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role} role.")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


curator_required = role_required(CURATOR)
expert_required = role_required(EXPERT)


def context_processor(request):
    user = getattr(request, "user", None)
    if user is None:
        return {}
    return {"is_curator": has_role(user, CURATOR), "is_expert": has_role(user, EXPERT)}
