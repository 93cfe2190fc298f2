"""API tokens: making, revoking, and recognising them on a request.

A key is `cd_` and 43 random URL-safe characters; only its sha256 is stored. Requests carry it as
`Authorization: Bearer <key>` (or `Token <key>`, as Django REST framework clients send it).
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.utils import timezone

from library.models import ApiToken

KEY_PREFIX = "cd_"
SCHEMES = ("bearer", "token")
# `last_used_at` is written at most this often per token: an agent paging through results should not
# turn every read into a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class TokenRefused(Exception):
    """A token that cannot be made or revoked; the message says why."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """A new token for user; the key is returned here and never again."""
    name = name.strip()
    if not name:
        raise TokenRefused("Name the token after what will use it, e.g. 'research agent'.")
    if not user.is_active:
        raise TokenRefused(f"User {user.get_username()} is inactive.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name[:100], key_hash=hash_key(key), prefix=key[:10])
    return token, key


def api_token_revoke(*, token: ApiToken) -> ApiToken:
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at=None).update(revoked_at=timezone.now())
    if updated != 1:
        raise TokenRefused(f"Token {token.name!r} has already been revoked.")
    token.refresh_from_db()
    return token


@dataclass(frozen=True)
class Access:
    """Who is asking, or why they may not: `error` is set when the request is refused."""

    user: object = None
    token: ApiToken | None = None
    error: str = ""

    @property
    def allowed(self) -> bool:
        return not self.error


def request_access(request) -> Access:
    """May this request read the library?

    A presented token must be valid, public deployment or not: a client whose key was revoked is told so
    instead of silently reading as an anonymous visitor. Without a token, a logged-in session will do, and
    anyone may read while LIBRARY_PUBLIC is true.
    """
    header = request.headers.get("Authorization", "").strip()
    if header:
        return _token_access(header)
    if request.user.is_authenticated:
        return Access(user=request.user)
    if settings.LIBRARY_PUBLIC:
        return Access()
    return Access(error="Authentication required: send 'Authorization: Bearer <token>'.")


def unauthorized(message: str) -> JsonResponse:
    """The API's 401: JSON, and the scheme to use."""
    response = JsonResponse({"error": message}, status=401)
    response["WWW-Authenticate"] = 'Bearer realm="codedistiller"'
    return response


def refusal(request) -> HttpResponse | None:
    """For the downloads that agents fetch beside the API (exports, an example's folder, its saved files):
    None when the request may read the library, else the answer that says why.

    The API's 401 in JSON, except for a browser's page navigation without credentials (it asks for HTML
    first), which goes to the login page as every other page of the site does.
    """
    access = request_access(request)
    if access.allowed:
        return None
    if "Authorization" not in request.headers and request.headers.get("Accept", "").startswith("text/html"):
        return redirect_to_login(request.get_full_path())
    return unauthorized(access.error)


def _token_access(header: str) -> Access:
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() not in SCHEMES or not key:
        return Access(error="Malformed Authorization header: expected 'Bearer <token>'.")
    token = ApiToken.objects.select_related("user").filter(key_hash=hash_key(key)).first()
    if token is None:
        return Access(error="Invalid token.")
    if token.is_revoked:
        return Access(error="This token has been revoked.")
    if not token.user.is_active:
        return Access(error="The token's user is inactive.")
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return Access(user=token.user, token=token)
