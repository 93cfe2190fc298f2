"""Ids and page numbers from URLs are bounded (codedistiller_site/ids.py): a number too large for the
database is no id of ours, never a 500 (`/runs/?ids=99999999999999999999` raised OverflowError)."""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from codedistiller_site.ids import parse_id
from codedistiller_site.roles import CURATOR, EXPERT
from tests.conftest import logged_in, make_user
from tests.factories import make_iteration, make_run

HUGE = "9" * 20


def routes(patterns=None, prefix=""):
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            yield from routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            yield prefix + str(pattern.pattern)


@pytest.fixture
def client(django_user_model):
    user = make_user(django_user_model, "ada", CURATOR, EXPERT, is_staff=True, is_superuser=True)
    return logged_in(user)


def test_parse_id_takes_digits_that_fit_the_database():
    assert parse_id(" 42 ") == 42
    assert parse_id("9" * 18) == 10**18 - 1
    assert [parse_id(text) for text in [HUGE, "-1", "1.5", "", None, "²", "0x1"]] == [None] * 7


def test_every_id_in_a_path_is_read_through_the_bounded_converter():
    with_numbers = [route for route in routes() if "<int:" in route or "<id:" in route]

    assert with_numbers, "the site has addresses with ids"
    assert [route for route in with_numbers if "<int:" in route] == []


@pytest.mark.django_db
def test_every_view_with_an_id_in_its_path_answers_404_to_a_huge_one(client):
    run = make_run()
    make_iteration(run)
    checked = []
    for route in routes():
        if "<id:" not in route:
            continue
        path = "/" + route.replace("<path:path>", "x")
        # Each id in turn is the huge one; the others are real (or at least small) ones.
        names = [part.split(">")[0] for part in route.split("<id:")[1:]]
        for huge in names:
            url = path
            for name in names:
                url = url.replace(
                    f"<id:{name}>", HUGE if name == huge else str(run.pk if "run" in name else 1)
                )
            response = client.get(url)
            assert response.status_code == 404, (url, response.status_code)
            checked.append(url)

    assert len(checked) >= 15


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        f"/runs/?ids={HUGE}",
        f"/runs/?ids=1,{HUGE},2",
        f"/runs/?page={HUGE}",
        f"/library/?page={HUGE}",
        f"/api/examples/?page={HUGE}",
        f"/reviews/queues/new/?examples={HUGE}&page={HUGE}",
        "/runs/{run}/?call=" + HUGE,
        "/runs/{run}/diff/?a=" + HUGE + "&b=1",
    ],
)
def test_every_view_with_an_id_or_page_in_its_query_answers_without_an_error(client, url):
    run = make_run()
    make_iteration(run)

    response = client.get(url.format(run=run.pk))

    assert response.status_code in (200, 400, 404), response.status_code
