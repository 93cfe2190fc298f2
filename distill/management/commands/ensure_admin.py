"""Create the admin account from DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD, once."""

import os

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand

from codedistiller_site.roles import ROLES


class Command(BaseCommand):
    help = "Create the admin account from the environment when it is set and the account does not exist."

    def handle(self, *args, **options):
        User = get_user_model()
        username = os.environ.get("DJANGO_SUPERUSER_USERNAME")
        password = os.environ.get("DJANGO_SUPERUSER_PASSWORD")
        if not username or not password:
            if not User.objects.filter(is_superuser=True).exists():
                self.stdout.write(
                    "No admin account yet. Create one with\n"
                    "  DJANGO_SUPERUSER_USERNAME=admin DJANGO_SUPERUSER_PASSWORD=... make run\n"
                    "or: .venv/bin/python manage.py createsuperuser"
                )
            return
        user, created = User.objects.get_or_create(
            username=username,
            defaults={
                "is_staff": True,
                "is_superuser": True,
                "email": os.environ.get("DJANGO_SUPERUSER_EMAIL", ""),
            },
        )
        if created:
            user.set_password(password)
            user.save()
            # The admin also does the work of both roles, so the pages show their actions.
            user.groups.add(*Group.objects.filter(name__in=ROLES))
            self.stdout.write(f"Created the admin account {username!r}.")
        else:
            self.stdout.write(f"The admin account {username!r} exists; its password was left as it is.")
