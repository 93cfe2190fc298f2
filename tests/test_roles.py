import pytest
from django.contrib.auth.models import Group
from django.urls import reverse

from codedistiller_site.roles import CURATOR, EXPERT, has_role

pytestmark = pytest.mark.django_db


def test_the_role_groups_exist_after_migrate():
    assert set(Group.objects.values_list("name", flat=True)) >= {CURATOR, EXPERT}


def test_has_role_follows_group_membership(curator, expert, reader, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="x" * 12)
    assert has_role(curator, CURATOR) and not has_role(curator, EXPERT)
    assert has_role(expert, EXPERT) and not has_role(expert, CURATOR)
    assert not has_role(reader, CURATOR) and not has_role(reader, EXPERT)
    assert has_role(admin, CURATOR) and has_role(admin, EXPERT)


def test_the_submit_page_sends_anonymous_visitors_to_log_in(client):
    response = client.get(reverse("run_new"))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_submit_page_refuses_a_user_without_the_curator_role(reader_client):
    response = reader_client.get(reverse("run_new"))
    assert response.status_code == 403
    assert b"curator role" in response.content


def test_the_submit_page_opens_for_a_curator(curator_client):
    assert curator_client.get(reverse("run_new")).status_code == 200


def test_runs_need_a_login_but_no_role(client, reader_client):
    assert client.get(reverse("runs")).status_code == 302
    assert reader_client.get(reverse("runs")).status_code == 200


def test_the_library_is_public_by_default(client):
    assert client.get(reverse("library")).status_code == 200


def test_a_private_library_sends_anonymous_visitors_to_log_in(client, reader_client, settings):
    settings.LIBRARY_PUBLIC = False
    assert client.get(reverse("library")).status_code == 302
    assert reader_client.get(reverse("library")).status_code == 200


def test_reviews_need_a_login(client, expert_client):
    assert client.get(reverse("reviews")).status_code == 302
    assert expert_client.get(reverse("reviews")).status_code == 200


@pytest.mark.django_db
def test_a_refused_request_is_logged_in_one_line_without_a_traceback(reader_client, caplog):
    response = reader_client.get("/runs/new/")

    assert response.status_code == 403
    [record] = [r for r in caplog.records if r.name == "django.request"]
    assert record.levelname == "WARNING"
    assert record.getMessage() == "Forbidden (Permission denied): /runs/new/"
    assert record.exc_info is None
    assert "\n" not in caplog.text.strip()
