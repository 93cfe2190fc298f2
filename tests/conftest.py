import pytest
from django.contrib.auth.models import Group
from django.test import Client

from codedistiller_site.roles import CURATOR, EXPERT

PASSWORD = "a-long-test-password-42"


def make_user(django_user_model, username: str, *roles: str, **extra):
    user = django_user_model.objects.create_user(username=username, password=PASSWORD, **extra)
    # get_or_create: a transactional test (the live server's) flushes the tables, and with them the
    # groups that the data migration made.
    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in roles))
    return user


@pytest.fixture
def curator(django_user_model):
    return make_user(django_user_model, "cora", CURATOR)


@pytest.fixture
def expert(django_user_model):
    return make_user(django_user_model, "eddie", EXPERT)


@pytest.fixture
def reader(django_user_model):
    """Logged in, but with no role: may read runs and the library, may not act."""
    return make_user(django_user_model, "rita")


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def curator_client(curator):
    return logged_in(curator)


@pytest.fixture
def expert_client(expert):
    return logged_in(expert)


@pytest.fixture
def reader_client(reader):
    return logged_in(reader)


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    """Each test writes run folders and clones under its own temporary folder."""
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR
