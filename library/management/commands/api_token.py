"""Make, list and revoke API tokens: `manage.py api_token create USERNAME --name 'research agent'`."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from library.api_auth import KEY_PREFIX, TokenRefused, api_token_create, api_token_revoke, hash_key
from library.models import ApiToken


class Command(BaseCommand):
    help = "Make an API token for a user (the key is printed once), list tokens, or revoke one."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        create = actions.add_parser("create", help="Make a token and print its key, once.")
        create.add_argument("username")
        create.add_argument("--name", required=True, help="What the token is for, e.g. 'research agent'.")
        listing = actions.add_parser("list", help="List tokens (never their keys).")
        listing.add_argument("username", nargs="?")
        revoke = actions.add_parser("revoke", help="Revoke a token, given its id or its key.")
        revoke.add_argument("token", help="The id shown by `list`, or the key itself.")

    def handle(self, *args, action, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except TokenRefused as exc:
            raise CommandError(str(exc)) from None

    def _create(self, *, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"There is no user {username!r}.")
        token, key = api_token_create(user=user, name=name)
        self.stderr.write(
            f"Token {token.pk} ({token.name}) for {username}. The key is shown only now; keep it secret:"
        )
        self.stdout.write(key)

    def _list(self, *, username=None, **options):
        tokens = ApiToken.objects.select_related("user")
        if username:
            tokens = tokens.filter(user__username=username)
        for token in tokens:
            state = f"revoked {token.revoked_at:%Y-%m-%d %H:%M}" if token.is_revoked else "active"
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never"
            self.stdout.write(
                f"{token.pk}\t{token.prefix}…\t{token.user.get_username()}\t{token.name}\t{state}\tused {used}"
            )

    def _revoke(self, *, token, **options):
        if token.startswith(KEY_PREFIX):
            found = ApiToken.objects.filter(key_hash=hash_key(token)).first()
        else:
            found = ApiToken.objects.filter(pk=int(token)).first() if token.isdigit() else None
        if found is None:
            raise CommandError(
                f"There is no token {token[:12]!r}: give an id from `api_token list`, or the key."
            )
        api_token_revoke(token=found)
        self.stdout.write(f"Revoked token {found.pk} ({found.name}).")
