import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


def test_the_landing_page_says_what_the_product_does(client):
    response = client.get(reverse("home"))
    assert response.status_code == 200
    assert b"Working, vetted examples" in response.content
    assert reverse("library").encode() in response.content


def test_the_landing_page_offers_a_curator_the_submit_page(curator_client, reader_client):
    assert reverse("run_new").encode() in curator_client.get(reverse("home")).content
    assert reverse("run_new").encode() not in reader_client.get(reverse("home")).content


def test_the_base_layout_loads_htmx_locally_and_sends_csrf_through_hx_headers(client):
    html = client.get(reverse("home")).content.decode()
    assert "/static/django_htmx/htmx" in html
    assert "//unpkg.com" not in html and "cdn" not in html.lower()
    assert 'hx-headers=\'{"X-CSRFToken": "' in html


def test_the_navigation_links_every_section(client):
    html = client.get(reverse("home")).content.decode()
    for name in ("runs", "library", "reviews"):
        assert f'href="{reverse(name)}"' in html


def test_the_admin_link_shows_for_staff_only(client, django_user_model):
    assert 'href="/admin/"' not in client.get(reverse("home")).content.decode()
    client.force_login(django_user_model.objects.create_superuser("root", password="x" * 12))
    assert 'href="/admin/"' in client.get(reverse("home")).content.decode()


def test_logging_out_returns_to_the_landing_page(curator_client):
    response = curator_client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("home")
    assert curator_client.get(reverse("runs")).status_code == 302
