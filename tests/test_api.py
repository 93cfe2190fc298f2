import copy
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_spec

from library import api, api_schema
from library.api_auth import api_token_create, api_token_revoke
from library.filters import PARAMS
from library.models import ApiToken, Example
from library.services import example_approve, example_retract
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

DOCUMENT = api_schema.openapi_document(server_url="http://testserver", public=True)


def make_example(curator, slug="minilib", *, title=None, tags=("statistics",), **iteration):
    run = make_run(source_url=f"https://github.com/example/{slug}", source_title=f"example/{slug}")
    iteration.setdefault(
        "metadata",
        {
            "description": f"Shows {slug}.",
            "inclusion_criteria": f"When you need {slug}.",
            "example_type": "demonstration",
            "python_version": "3.11",
        },
    )
    make_iteration(run, 1, **iteration)
    return example_approve(
        run=run,
        approved_by=curator,
        title=title or f"Using {slug}",
        summary=f"Computes things with {slug}.",
        tags=list(tags),
    )


def strict(schema):
    """The schema with every described object closed: an answer may not carry an undescribed field."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)

    close(schema)
    return schema


def assert_matches(response, path: str):
    """The answer is JSON and fits the schema the OpenAPI document declares for its path and status."""
    assert response["Content-Type"] == "application/json"
    declared = DOCUMENT["paths"][path]["get"]["responses"][str(response.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    validator = Draft202012Validator(
        strict({**schema, "components": DOCUMENT["components"]}),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )
    errors = sorted(validator.iter_errors(response.json()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    return response.json()


def examples_url(**params):
    return reverse("api_examples"), params


# The OpenAPI document ---------------------------------------------------------------------------------


@pytest.mark.parametrize("public", [True, False])
def test_the_openapi_document_is_valid_openapi_3_1(client, settings, public):
    settings.LIBRARY_PUBLIC = public
    response = client.get(reverse("api_openapi"))
    assert response.status_code == 200
    document = response.json()
    validate_spec(document)
    assert document["openapi"] == "3.1.0"
    assert ({} in document["security"]) is public
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_the_document_describes_every_api_address():
    from library import api_urls

    described = set(DOCUMENT["paths"])
    for pattern in api_urls.urlpatterns:
        if pattern.name == "api_not_found":  # the JSON 404 for every other address
            continue
        address = "/api/" + str(pattern.pattern).replace("<id:example_id>", "{id}")
        assert address in described
    downloads = {
        reverse("library_export"),
        reverse("example_download", args=[7]),
        reverse("example_file", args=[7, "p"]),
    }
    assert {
        path.replace("{id}", "7").replace("{path}", "p") for path in described if path.startswith("/library/")
    } == downloads
    for path in described:
        operation = DOCUMENT["paths"][path]["get"]
        assert "200" in operation["responses"] and "401" in operation["responses"]


# The index ------------------------------------------------------------------------------------------


def test_the_index_links_to_everything(client):
    data = assert_matches(client.get(reverse("api_index")), "/api/")
    assert data["public"] is True and data["authenticated"] is False
    assert data["links"]["examples"] == "http://testserver/api/examples/"
    assert data["links"]["openapi"] == "http://testserver/api/openapi.json"
    assert client.get(data["links"]["export_codeblocks"]).status_code == 200


# Search and filters -------------------------------------------------------------------------------------


def test_it_lists_the_newest_approved_version_of_each_source(client, curator):
    old = make_example(curator, "minilib")
    new = make_example(curator, "minilib", title="Using minilib, again")
    other = make_example(curator, "otherlib")
    gone = make_example(curator, "gonelib")
    example_retract(example=gone, retracted_by=curator, reason="Wrong.")

    data = assert_matches(client.get(reverse("api_examples")), "/api/examples/")
    assert [item["id"] for item in data["results"]] == [other.pk, new.pk]
    assert data["count"] == 2 and data["next"] is None and data["previous"] is None
    item = data["results"][1]
    assert item["version"] == 2 and item["title"] == "Using minilib, again" and item["tags"] == ["statistics"]
    assert item["source_url"] == old.source_url and item["commit_sha"] == old.commit_sha
    assert item["links"]["self"] == f"http://testserver/api/examples/{new.pk}/"
    assert item["links"]["download"] == f"http://testserver/library/{new.pk}/download/"


def test_it_searches(client, curator):
    make_example(curator, "graphs", title="Shortest paths in graphs")
    spectra = make_example(curator, "spectra", title="Peak fitting of spectra")

    data = assert_matches(client.get(reverse("api_examples"), {"q": "spectra"}), "/api/examples/")
    assert [item["id"] for item in data["results"]] == [spectra.pk]
    assert data["query"] == {"q": "spectra"}
    empty = assert_matches(client.get(reverse("api_examples"), {"q": "zebrafish"}), "/api/examples/")
    assert empty["count"] == 0 and empty["results"] == [] and empty["num_pages"] == 1


def test_it_filters_by_tag_language_type_gpu_and_model(client, curator):
    plain = make_example(curator, "plain", tags=("statistics",))
    gpu = make_example(curator, "gpu", tags=("deep-learning", "statistics"))
    Example.objects.filter(pk=gpu.pk).update(
        gpu_required=True, example_type="workflow", language="julia", model_code="anthropic/claude-x"
    )

    def ids(**params):
        data = assert_matches(client.get(reverse("api_examples"), params), "/api/examples/")
        return [item["id"] for item in data["results"]]

    assert ids(tag="statistics") == [gpu.pk, plain.pk]
    assert client.get(reverse("api_examples") + "?tag=statistics&tag=deep-learning").json()["count"] == 1
    assert ids(tag="deep-learning") == [gpu.pk]
    assert ids(language="julia") == [gpu.pk] and ids(language="python") == [plain.pk]
    assert ids(example_type="workflow") == [gpu.pk] and ids(example_type="demonstration") == [plain.pk]
    assert ids(gpu="true") == [gpu.pk] and ids(gpu="false") == [plain.pk]
    assert ids(model="anthropic/claude-x") == [gpu.pk]
    assert ids(source=plain.source_url) == [plain.pk]
    assert ids(tag="nothing-like-it") == []


def test_it_filters_by_the_library_pages_score_and_usage_bands_and_sorts_as_it_does(client, curator):
    low = make_example(curator, "low")
    high = make_example(curator, "high")
    unscored = make_example(curator, "unscored")
    middle = make_example(curator, "middle")
    for example, score, covered in [(low, 2.5, 0.05), (high, 4.5, 0.7), (middle, 3.5, 0.2)]:
        Example.objects.filter(pk=example.pk).update(score=score, usage={"repo_share_covered": covered})

    def ids(**params):
        data = assert_matches(client.get(reverse("api_examples"), params), "/api/examples/")
        return [item["id"] for item in data["results"]]

    assert ids(score="4+") == [high.pk] and ids(score="under-3") == [low.pk]
    assert ids(score="unscored") == [unscored.pk]
    assert ids(usage="half") == [high.pk] and ids(usage="tenth", score="3-4") == [middle.pk]
    assert ids(sort="score") == [high.pk, middle.pk, low.pk, unscored.pk]
    assert ids() == [middle.pk, unscored.pk, high.pk, low.pk]  # newest first
    assert client.get(reverse("api_examples"), {"sort": "score"}).json()["query"] == {"sort": "score"}


def test_it_pages(client, curator):
    made = [make_example(curator, f"lib{n}") for n in range(5)]
    newest_first = [example.pk for example in reversed(made)]

    first = assert_matches(client.get(reverse("api_examples"), {"page_size": 2}), "/api/examples/")
    assert first["count"] == 5 and first["num_pages"] == 3 and first["page"] == 1 and first["page_size"] == 2
    assert [item["id"] for item in first["results"]] == newest_first[:2]
    assert first["previous"] is None
    second = assert_matches(client.get(first["next"]), "/api/examples/")
    assert [item["id"] for item in second["results"]] == newest_first[2:4]
    assert client.get(second["previous"]).json()["results"] == first["results"]
    last = client.get(reverse("api_examples"), {"page_size": 2, "page": 3}).json()
    assert [item["id"] for item in last["results"]] == newest_first[4:] and last["next"] is None


@pytest.mark.parametrize(
    "params, message",
    [
        ({"page": "abc"}, "page must be a whole number"),
        ({"page": "0"}, "page must be at least 1"),
        ({"page_size": "101"}, "page_size must be between 1 and 100"),
        ({"gpu": "maybe"}, "gpu must be true or false"),
        ({"min_score": "high"}, "min_score must be a number"),
        ({"score": "5"}, "score must be one of 4+, 3-4, under-3, unscored"),
        ({"usage": "most"}, "usage must be one of half, tenth, little"),
        ({"sort": "oldest"}, "sort must be one of relevance, newest, score"),
    ],
)
def test_a_bad_parameter_is_a_400_that_names_it(client, params, message):
    response = client.get(reverse("api_examples"), params)
    assert response.status_code == 400
    assert message in assert_matches(response, "/api/examples/")["error"]


def test_a_page_past_the_last_is_a_404(client, curator):
    make_example(curator)
    response = client.get(reverse("api_examples"), {"page": 2})
    assert response.status_code == 404
    assert "past the last page" in assert_matches(response, "/api/examples/")["error"]


# One example and its versions ------------------------------------------------------------------------------


def test_an_example_comes_with_its_files_requirements_provenance_and_results(client, curator):
    example = make_example(curator)
    example.saved_files = [{"name": "plot.png", "size": 4}]
    example.save()

    data = assert_matches(client.get(reverse("api_example", args=[example.pk])), "/api/examples/{id}/")
    assert data["id"] == example.pk and data["status"] == "approved" and data["is_latest"] is True
    assert {file["name"]: file["content"] for file in data["files"]} == example.files
    assert data["requirements"] == ["numpy==2.1.0"]
    assert data["how_to_run"] == ["pip install -r requirements.txt", "python main.py"]
    assert data["results"] == {"x": 1} and data["metadata"]["description"] == "Shows minilib."
    assert data["inclusion_criteria"] == "When you need minilib." and data["python_version"] == "3.11"
    provenance = data["provenance"]
    assert provenance["source_url"] == example.source_url and provenance["commit_sha"] == example.commit_sha
    assert provenance["run_id"] == example.run_id and provenance["iteration_number"] == 1
    assert provenance["approved_by"] == curator.username and provenance["model_code"] == example.model_code
    assert data["saved_files"] == [
        {"name": "plot.png", "size": 4, "url": f"http://testserver/library/{example.pk}/files/plot.png"}
    ]
    assert data["links"]["latest"] == data["links"]["self"]


def test_an_older_version_is_readable_and_points_to_the_latest(client, curator):
    old = make_example(curator)
    new = make_example(curator)
    data = assert_matches(client.get(reverse("api_example", args=[old.pk])), "/api/examples/{id}/")
    assert data["is_latest"] is False and data["version"] == 1
    assert data["links"]["latest"] == f"http://testserver/api/examples/{new.pk}/"


def test_a_retracted_example_is_gone_with_its_reason(client, curator):
    old = make_example(curator)
    new = make_example(curator)
    example_retract(example=new, retracted_by=curator, reason="It uses a deprecated API.")

    response = client.get(reverse("api_example", args=[new.pk]))
    assert response.status_code == 410
    data = assert_matches(response, "/api/examples/{id}/")
    assert "It uses a deprecated API." in data["error"]
    assert data["retracted"]["reason"] == "It uses a deprecated API." and data["retracted"]["retracted_at"]
    assert data["links"]["latest"] == f"http://testserver/api/examples/{old.pk}/"


def test_an_unknown_example_is_a_json_404(client):
    for name in ("api_example", "api_example_versions"):
        response = client.get(reverse(name, args=[999]))
        assert response.status_code == 404
        assert assert_matches(response, "/api/examples/{id}/")["error"] == "There is no example 999."


def test_versions_are_listed_newest_first_retracted_ones_with_their_reason(client, curator):
    first = make_example(curator)
    second = make_example(curator)
    third = make_example(curator)
    make_example(curator, "otherlib")
    example_retract(example=third, retracted_by=curator, reason="Broken.")

    response = client.get(reverse("api_example_versions", args=[first.pk]))
    data = assert_matches(response, "/api/examples/{id}/versions/")
    assert data["source_url"] == first.source_url and data["count"] == 3
    assert [(v["id"], v["version"], v["status"], v["is_latest"]) for v in data["results"]] == [
        (third.pk, 3, "retracted", False),
        (second.pk, 2, "approved", True),
        (first.pk, 1, "approved", False),
    ]
    assert data["results"][0]["retracted"]["reason"] == "Broken." and data["results"][1]["retracted"] is None
    assert client.get(reverse("api_example_versions", args=[third.pk])).json() == data


# Methods and CORS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_it_is_read_only(client, curator, method):
    example = make_example(curator)
    for url in (reverse("api_examples"), reverse("api_example", args=[example.pk]), reverse("api_index")):
        response = getattr(client, method)(url)
        assert response.status_code == 405 and response["Allow"] == "GET, HEAD, OPTIONS"
        assert response.json()["error"].endswith("this API is read-only.")
    # A 405, not the CSRF check's 403.
    assert Client(enforce_csrf_checks=True).post(reverse("api_examples")).status_code == 405


def test_any_origin_may_read_without_cookies(client):
    response = client.get(reverse("api_examples"), HTTP_ORIGIN="https://agent.example")
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response
    preflight = client.options(
        reverse("api_examples"),
        HTTP_ORIGIN="https://agent.example",
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization",
    )
    assert preflight.status_code == 204
    assert preflight["Access-Control-Allow-Headers"] == "Authorization"
    assert preflight["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"


# Authentication ---------------------------------------------------------------------------------------


@pytest.fixture
def private(settings):
    settings.LIBRARY_PUBLIC = False


def test_a_public_library_needs_no_token(client, curator):
    make_example(curator)
    assert client.get(reverse("api_examples")).json()["count"] == 1


def test_without_a_token_a_private_library_answers_401(client, curator, private):
    example = make_example(curator)
    for url in (
        reverse("api_examples"),
        reverse("api_example", args=[example.pk]),
        reverse("api_example_versions", args=[example.pk]),
    ):
        response = client.get(url)
        assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
        assert "Authentication required" in response.json()["error"]
    # How to authenticate is readable by all.
    assert client.get(reverse("api_index")).json()["public"] is False
    assert client.get(reverse("api_openapi")).status_code == 200


@pytest.mark.parametrize(
    "header, message",
    [
        ("Bearer cd_not-a-real-key", "Invalid token."),
        ("Basic dXNlcjpwYXNz", "Malformed Authorization header"),
        ("Bearer", "Malformed Authorization header"),
    ],
)
def test_a_bad_token_is_a_401(client, curator, private, header, message):
    response = client.get(reverse("api_examples"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert message in assert_matches(response, "/api/examples/")["error"]


def test_a_bad_token_is_a_401_even_where_none_is_needed(client, curator):
    response = client.get(reverse("api_examples"), HTTP_AUTHORIZATION="Bearer cd_wrong")
    assert response.status_code == 401
    assert client.get(reverse("api_index"), HTTP_AUTHORIZATION="Bearer cd_wrong").status_code == 401


def test_a_good_token_reads_and_is_marked_used(client, curator, reader, private):
    make_example(curator)
    token, key = api_token_create(user=reader, name="research agent")
    assert token.last_used_at is None and key.startswith("cd_") and token.key_hash != key

    response = client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200 and response.json()["count"] == 1
    token.refresh_from_db()
    assert token.last_used_at is not None and timezone.now() - token.last_used_at < timedelta(seconds=10)
    assert client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    index = client.get(reverse("api_index"), HTTP_AUTHORIZATION=f"bearer {key}").json()
    assert index["authenticated"] is True


def test_last_used_is_written_at_most_once_a_minute(client, reader, private):
    token, key = api_token_create(user=reader, name="agent")
    recently = timezone.now() - timedelta(seconds=5)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=recently)
    client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}")
    token.refresh_from_db()
    assert token.last_used_at == recently


def test_a_revoked_token_is_a_401(client, reader, private):
    token, key = api_token_create(user=reader, name="agent")
    api_token_revoke(token=token)
    token.refresh_from_db()
    assert token.is_revoked
    response = client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 401 and response.json()["error"] == "This token has been revoked."


def test_the_token_of_an_inactive_user_is_a_401(client, reader, private):
    _token, key = api_token_create(user=reader, name="agent")
    reader.is_active = False
    reader.save()
    assert client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401


def test_a_logged_in_session_reads_a_private_library(reader_client, curator, private):
    make_example(curator)
    response = reader_client.get(reverse("api_examples"))
    assert response.status_code == 200 and response.json()["count"] == 1


# The token command ------------------------------------------------------------------------------------


def test_the_command_makes_lists_and_revokes_tokens(client, reader, private):
    out, err = StringIO(), StringIO()
    call_command("api_token", "create", reader.username, "--name", "research agent", stdout=out, stderr=err)
    key = out.getvalue().strip()
    assert "shown only now" in err.getvalue()
    token = ApiToken.objects.get(user=reader)
    assert token.name == "research agent" and token.key_hash != key and key.startswith(token.prefix)
    assert client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200

    out = StringIO()
    call_command("api_token", "list", stdout=out)
    assert "research agent" in out.getvalue() and key not in out.getvalue()

    call_command("api_token", "revoke", key, stdout=StringIO())
    assert client.get(reverse("api_examples"), HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401
    with pytest.raises(CommandError, match="already been revoked"):
        call_command("api_token", "revoke", str(token.pk), stdout=StringIO())


def test_the_admin_revokes_tokens(client, django_user_model, reader):
    admin = django_user_model.objects.create_superuser("root", password="a-long-test-password-42")
    token, _key = api_token_create(user=reader, name="agent")
    client.force_login(admin)
    response = client.post(
        reverse("admin:library_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [token.pk]},
    )
    assert response.status_code == 302
    token.refresh_from_db()
    assert token.is_revoked
    assert client.get(reverse("admin:library_apitoken_change", args=[token.pk])).status_code == 200


def test_the_command_refuses_an_unknown_user_or_token(reader):
    with pytest.raises(CommandError, match="no user 'nobody'"):
        call_command("api_token", "create", "nobody", "--name", "x", stdout=StringIO())
    with pytest.raises(CommandError, match="no token"):
        call_command("api_token", "revoke", "12345", stdout=StringIO())
    with pytest.raises(CommandError, match="Name the token"):
        call_command("api_token", "create", reader.username, "--name", " ", stdout=StringIO())


# Strictness: JSON everywhere, finite numbers, known parameters only -------------------------------------


@pytest.mark.parametrize("path", ["/api/nothing/", "/api/examples/null%2Cnull/", "/api/examples/1/files/"])
def test_every_unknown_address_under_api_is_a_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert response.json()["error"].startswith("There is no API address")
    assert response["Access-Control-Allow-Origin"] == "*"


def test_a_missing_slash_is_named_in_the_404(client):
    response = client.get("/api/examples")
    assert response.status_code == 404
    assert "Did you mean /api/examples/?" in response.json()["error"]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity", "1e999"])
def test_a_non_finite_number_is_refused_not_echoed_as_invalid_json(client, value):
    response = client.get(reverse("api_examples"), {"min_score": value})
    assert response.status_code == 400
    assert assert_matches(response, "/api/examples/")["error"] == (
        f"min_score must be a finite number, not {value!r}"
    )


@pytest.mark.parametrize(
    "url, params, unknown",
    [
        ("api_examples", {"library": "scipy"}, ["library"]),
        ("api_examples", {"kind": "workflow", "q": "x", "limit": "3"}, ["kind", "limit"]),
        ("api_index", {"format": "json"}, ["format"]),
        ("api_openapi", {"v": "2"}, ["v"]),
    ],
)
def test_an_unknown_parameter_is_a_400_that_names_it(client, url, params, unknown):
    response = client.get(reverse(url), params)
    assert response.status_code == 400
    data = response.json()
    assert data["unknown"] == unknown and data["error"].startswith(
        f"Unknown query parameter {', '.join(unknown)}:"
    )


def test_the_list_takes_the_library_filters_and_its_own_parameters_each_described():
    described = {parameter["name"] for parameter in DOCUMENT["paths"]["/api/examples/"]["get"]["parameters"]}
    assert set(api.LIST_PARAMS) == {*PARAMS, "include", "page", "page_size"} == described


def test_the_example_addresses_take_no_parameters(client, curator):
    example = make_example(curator)
    response = client.get(reverse("api_example", args=[example.pk]), {"include": "files"})
    assert response.status_code == 400
    assert assert_matches(response, "/api/examples/{id}/")["error"].endswith("it takes none.")


def test_an_empty_value_is_the_same_as_no_parameter(client, curator):
    make_example(curator)
    empty = {name: "" for name in ("q", "tag", "language", "requirement", "min_score", "score", "gpu")}
    data = assert_matches(client.get(reverse("api_examples"), empty), "/api/examples/")
    assert data["count"] == 1 and data["query"] == {}


def test_it_filters_by_requirement_as_pip_compares_names(client, curator):
    def with_requirements(slug, text):
        example = make_example(curator, slug)
        Example.objects.filter(pk=example.pk).update(files={**example.files, "requirements.txt": text})
        return example

    sklearn = with_requirements("learn", "numpy\nScikit-Learn>=1.5  # the classifier\n")
    pinned = with_requirements("pinned", "scikit_learn==1.4.2; python_version >= '3.10'\n")
    with_requirements("other", "scikit-learn-extra\n# scikit-learn, in a comment\nsklearn\n")

    def ids(name):
        data = assert_matches(client.get(reverse("api_examples"), {"requirement": name}), "/api/examples/")
        return sorted(item["id"] for item in data["results"])

    assert (
        ids("scikit-learn") == ids("SCIKIT.LEARN") == ids("scikit_learn") == sorted([sklearn.pk, pinned.pk])
    )
    assert ids("numpy") == [sklearn.pk]
    bad = client.get(reverse("api_examples"), {"requirement": "numpy>=2"})
    assert bad.status_code == 400 and "requirement must be a package name" in bad.json()["error"]


def test_list_items_carry_what_an_agent_chooses_by_and_include_adds_files(client, curator):
    example = make_example(curator, "spectra", title="Peak fitting of spectra")
    Example.objects.filter(pk=example.pk).update(
        files={**example.files, "requirements.txt": "numpy==2.1.0  # arrays\n# plots\nmatplotlib\n"}
    )

    data = assert_matches(client.get(reverse("api_examples"), {"q": "spectra"}), "/api/examples/")
    (item,) = data["results"]
    assert item["requirements"] == ["numpy==2.1.0", "matplotlib"]
    assert item["inclusion_criteria"] == "When you need spectra." and item["is_latest"] is True
    assert 0 < item["relevance"] <= 1 and "files" not in item
    assert client.get(reverse("api_examples")).json()["results"][0]["relevance"] is None

    data = assert_matches(
        client.get(reverse("api_examples"), {"include": "files,provenance", "page_size": 1}), "/api/examples/"
    )
    (item,) = data["results"]
    assert {file["name"] for file in item["files"]} == {"main.py", "requirements.txt", "runscript.sh"}
    assert item["provenance"]["commit_sha"] == example.commit_sha
    bad = client.get(reverse("api_examples"), {"include": "everything"})
    assert bad.status_code == 400 and bad.json()["error"] == "include takes files, provenance, not everything"
