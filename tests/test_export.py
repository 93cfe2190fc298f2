import io
import json
import re
import subprocess
import sys
import zipfile

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils.html import escape

from library import semantic
from library.export import SUMMARIES, codeblock_text, export_name, parse_codeblock
from library.services import example_approve, example_retract
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

CODESCIENTIST_FIELDS = ("name", "description", "inclusion_criteria", "exclusion_criteria", "python_version")


def codescientist_fields(text: str) -> dict:
    """A codeblock's fields as CodeScientist's loader reads them (allenai/codescientist, src/CodeBlockStore.py,
    parseCodeblockPython), written again from its rule: every line that starts with `#` once stripped,
    without its leading #s and spaces, is a field line when it starts with `<field>:` in any case; a field
    takes the value of its first such line, pip_requirement of all of them."""
    comments = [
        re.sub(r"^#+", "", line.strip()).strip() for line in text.split("\n") if line.strip().startswith("#")
    ]
    fields: dict = {"pip_requirement": []}
    for field in (*CODESCIENTIST_FIELDS, "pip_requirement"):
        for line in comments:
            if line.lower().startswith(field + ":"):
                value = line[len(field) + 1 :].strip()
                if field == "pip_requirement":
                    fields[field].append(value)
                else:
                    fields[field] = value
                    break
    return fields


def make_example(
    curator, slug="minilib", *, title="Mean of squares with minilib", tags=("statistics",), **iteration
):
    run = make_run(source_url=f"https://github.com/example/{slug}", source_title=f"example/{slug}")
    iteration.setdefault(
        "metadata",
        {
            "description": f"Shows {slug}.",
            "inclusion_criteria": f"When you need {slug}.",
            "exclusion_criteria": f"When you do not use {slug}.",
            "example_type": "demonstration",
            "python_version": "3.11",
        },
    )
    make_iteration(run, 1, **iteration)
    return example_approve(
        run=run, approved_by=curator, title=title, summary=f"Computes things with {slug}.", tags=list(tags)
    )


def unzip(response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"] == "application/zip"
    return zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))


def test_the_zip_export_holds_a_folder_per_example_and_an_index(client, curator):
    first = make_example(curator, "minilib", saved_files=[{"name": "plot.png", "size": 4}])
    second = make_example(curator, "otherlib", title="Fitting with otherlib", tags=("fitting",))
    # Saved files are copied at approval; write one where the approval put it.
    (first.files_dir / "to_save").mkdir(parents=True, exist_ok=True)
    (first.files_dir / "to_save" / "plot.png").write_bytes(b"\x89PNG")
    first.saved_files = [{"name": "plot.png", "size": 4}]
    first.save()

    archive = unzip(client.get(reverse("library_export"), {"format": "zip"}))
    index = json.loads(archive.read("index.json"))

    assert index["format"] == "codedistiller-library" and index["count"] == 2
    assert {entry["id"] for entry in index["examples"]} == {first.pk, second.pk}
    folder = export_name(first)
    assert archive.read(f"{folder}/main.py").decode() == first.files["main.py"]
    assert archive.read(f"{folder}/requirements.txt").decode() == "numpy==2.1.0\n"
    assert archive.read(f"{folder}/to_save/plot.png") == b"\x89PNG"
    assert json.loads(archive.read(f"{folder}/results.json")) == {"x": 1}
    metadata = json.loads(archive.read(f"{folder}/metadata.json"))
    assert metadata["title"] == first.title and metadata["tags"] == ["statistics"]
    assert metadata["provenance"]["commit_sha"] == first.commit_sha
    assert metadata["provenance"]["run_id"] == first.run_id and metadata["retracted"] is None
    entry = next(entry for entry in index["examples"] if entry["id"] == first.pk)
    assert entry["folder"] == f"{folder}/" and "to_save/plot.png" in entry["files"]
    for name in entry["files"]:
        assert f"{folder}/{name}" in archive.namelist()


def test_the_codeblock_export_round_trips(client, curator):
    examples = [
        make_example(curator, "minilib"),
        make_example(curator, "otherlib", title="Fitting: with otherlib!", tags=("fitting",)),
    ]
    archive = unzip(client.get(reverse("library_export"), {"format": "codeblocks"}))
    summaries = json.loads(archive.read(SUMMARIES))

    assert sorted(archive.namelist()) == sorted(
        [f"{export_name(example)}.py" for example in examples] + [SUMMARIES]
    )
    for example in examples:
        name = export_name(example)
        fields = parse_codeblock(archive.read(f"{name}.py").decode())
        assert fields["name"] == name
        assert fields["description"] == f"{example.title}: {example.summary}"
        assert fields["inclusion_criteria"] == example.inclusion_criteria
        assert fields["exclusion_criteria"] == example.exclusion_criteria
        assert fields["python_version"] == "3.11"
        assert fields["pip_requirements"] == ["numpy==2.1.0"]
        assert fields["how_to_run"] == "pip install -r requirements.txt && python main.py"
        assert fields["code"] == example.files["main.py"]
        assert codescientist_fields(archive.read(f"{name}.py").decode()) == {
            "name": name,
            "description": fields["description"],
            "inclusion_criteria": example.inclusion_criteria,
            "exclusion_criteria": example.exclusion_criteria,
            "python_version": "3.11",
            "pip_requirement": ["numpy==2.1.0"],
        }
        summary = summaries[name]
        assert summary["name"] == name and summary["libraries"] == ["numpy"]
        assert summary["examples"] == example.description
        assert (
            summary["kinds_of_ideas"]
            == f"{', '.join(example.tags.values_list('name', flat=True))}; work that builds on {example.source_title}; demonstration"
        )
        assert summary["description"] == fields["description"]
        assert summary["when_to_use"] == example.inclusion_criteria
        assert summary["inclusion_criteria"] == example.inclusion_criteria
        assert summary["exclusion_criteria"] == example.exclusion_criteria
        assert summary["source_url"] == example.source_url


def test_multi_line_metadata_does_not_break_the_header(curator):
    example = make_example(
        curator,
        metadata={
            "description": "d",
            "inclusion_criteria": "Line one.\n# name: injected\r\nLine two.",
            "exclusion_criteria": "",
        },
        files={
            "main.py": "# name: not a header\nprint(1)\n",
            "requirements.txt": "# a comment\nnumpy>=2 ; python_version >= '3.10'\n\nscipy\n",
        },
    )
    text = codeblock_text(example)
    fields = parse_codeblock(text)

    assert fields["inclusion_criteria"] == "Line one. # name: injected Line two."
    assert fields["name"] == export_name(example)
    assert fields["exclusion_criteria"] == ""
    assert fields["pip_requirements"] == ["numpy>=2 ; python_version >= '3.10'", "scipy"]
    assert fields["code"] == "# [name]: not a header\nprint(1)\n"
    header = text.split("\n\n", 1)[0].splitlines()
    assert all(line.startswith("# ") for line in header)


def test_comments_in_the_program_that_look_like_header_lines_stay_comments_for_codescientist(curator):
    main = (
        "# pip_requirement: this-is-not-a-requirement\n"
        "import json\n"
        "def f():\n"
        "    ## Name: helper\n"
        "    #description:not ours\n"
        "    return 1  # pip_requirement: inline, never read\n"
        "# pip_requirements: a plural is no field\n"
    )
    example = make_example(
        curator,
        files={"main.py": main, "requirements.txt": "matplotlib>=3.8 # plotting\n# a comment\nnumpy\n"},
    )
    text = codeblock_text(example)

    fields = codescientist_fields(text)
    assert fields["pip_requirement"] == ["matplotlib>=3.8", "numpy"]
    assert fields["name"] == export_name(example) and fields["description"].startswith(example.title)
    code = parse_codeblock(text)["code"]
    assert code.splitlines() == [
        "# [pip_requirement]: this-is-not-a-requirement",
        "import json",
        "def f():",
        "    ## [Name]: helper",
        "    #[description]:not ours",
        "    return 1  # pip_requirement: inline, never read",
        "# pip_requirements: a plural is no field",
    ]
    compile(code, "main.py", "exec")  # still the same program


def test_summaries_merge_into_codescientists_own_file(client, curator, tmp_path):
    first = make_example(curator, "minilib")
    second = make_example(curator, "otherlib")
    export = tmp_path / "codeblocks.zip"
    export.write_bytes(
        b"".join(client.get(reverse("library_export"), {"format": "codeblocks"}).streaming_content)
    )
    codeblocks = tmp_path / "codeblocks"
    codeblocks.mkdir()
    theirs = {"their_block": {"name": "their_block", "description": "Theirs."}}
    stale = {export_name(first): {"name": export_name(first), "description": "An older export's."}}
    (codeblocks / "codeblock_summaries.json").write_text(json.dumps({**theirs, **stale}))
    out = io.StringIO()

    call_command("merge_codeblock_summaries", str(export), str(codeblocks), stdout=out)

    merged = json.loads((codeblocks / "codeblock_summaries.json").read_text())
    assert set(merged) == {"their_block", export_name(first), export_name(second)}
    assert merged["their_block"] == theirs["their_block"]
    assert merged[export_name(first)]["description"] == f"{first.title}: {first.summary}"
    assert merged[export_name(second)]["when_to_use"] == second.inclusion_criteria
    assert "1 summaries added, 1 replaced, 1 of its own kept." in out.getvalue()
    assert not list(codeblocks.glob("*.partial"))


def test_the_merge_refuses_what_it_cannot_read_in_one_line(tmp_path):
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CommandError, match="does not hold summaries keyed by codeblock name"):
        call_command("merge_codeblock_summaries", str(tmp_path / "list.json"), str(tmp_path))
    (tmp_path / "ours.json").write_text('{"a": {"name": "a"}}')
    (tmp_path / "codeblock_summaries.json").write_text("[1, 2]")
    with pytest.raises(CommandError, match="holds a JSON list, not an object of summaries"):
        call_command("merge_codeblock_summaries", str(tmp_path / "ours.json"), str(tmp_path))
    with pytest.raises(CommandError, match="has no codedistiller_summaries.json"):
        archive = tmp_path / "other.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("index.json", "{}")
        call_command("merge_codeblock_summaries", str(archive), str(tmp_path))


def test_names_are_unique_safe_and_stable(curator):
    one = make_example(curator, "a", title="Ünïcode / ../ slashes & CAPS")
    two = make_example(curator, "b", title="Ünïcode / ../ slashes & CAPS")
    blank = make_example(curator, "c", title="!!!")

    assert export_name(one) == f"unicode_slashes_caps_{one.pk}" and export_name(one) != export_name(two)
    assert export_name(blank) == f"example_{blank.pk}"
    one.refresh_from_db()
    assert export_name(one) == f"unicode_slashes_caps_{one.pk}"


def test_a_search_result_export_holds_only_the_matches(client, curator):
    match = make_example(curator, "spectra", title="Peak fitting of spectra")
    other = make_example(curator, "graphs", title="Shortest paths in graphs")

    archive = unzip(client.get(reverse("library_export"), {"format": "zip", "q": "spectra"}))
    index = json.loads(archive.read("index.json"))
    assert [entry["id"] for entry in index["examples"]] == [match.pk]
    assert index["query"] == {"q": "spectra"}
    assert all(name.startswith(export_name(match)) or name == "index.json" for name in archive.namelist())

    response = client.get(
        reverse("library_export"), {"format": "codeblocks", "q": "graphs", "tag": "statistics"}
    )
    assert "-search-" in response["Content-Disposition"]
    assert list(json.loads(unzip(response).read(SUMMARIES))) == [export_name(other)]


def test_facet_filters_narrow_the_export(client, curator):
    make_example(curator, "cpu", title="On the CPU")
    gpu = make_example(curator, "gpu", title="On the GPU", tags=("deep-learning",))
    type(gpu).objects.filter(pk=gpu.pk).update(gpu_required=True)

    archive = unzip(client.get(reverse("library_export"), {"gpu": "true"}))
    assert [entry["id"] for entry in json.loads(archive.read("index.json"))["examples"]] == [gpu.pk]
    archive = unzip(client.get(reverse("library_export"), {"tag": "deep-learning", "format": "codeblocks"}))
    assert list(json.loads(archive.read(SUMMARIES))) == [export_name(gpu)]


@pytest.fixture
def scored(curator):
    """Six examples with expert scores and repository usage across the library page's bands."""
    made = []
    for n, (score, covered) in enumerate(
        [(4.5, 0.8), (3.2, 0.05), (None, None), (2.0, 0.3), (4.0, 0.6), (3.9, 0.02)]
    ):
        example = make_example(curator, f"lib{n}", title=f"Fitting spectra, take {n}")
        usage = None if covered is None else {"repo_share_covered": covered}
        type(example).objects.filter(pk=example.pk).update(score=score, score_count=n, usage=usage)
        made.append(example)
    return made


@pytest.mark.parametrize(
    "params",
    [
        {"score": "4+"},
        {"score": "3-4", "sort": "score"},
        {"score": "unscored"},
        {"usage": "half"},
        {"usage": "little", "score": "3-4"},
        {"q": "spectra", "score": "4+", "sort": "score"},
        {"q": "fitting spectra", "usage": "tenth"},
    ],
)
def test_an_export_from_a_filtered_library_page_holds_what_the_page_lists(client, scored, params):
    page = client.get(reverse("library"), params)
    listed = [row.pk for row in page.context["rows"]]
    assert 0 < len(listed) < len(scored)  # the filter leaves some out
    link = f"{reverse('library_export')}?format=zip&{page.context['filter_query']}"
    assert f'href="{escape(link)}"' in page.content.decode()

    archive = unzip(client.get(link))
    assert [entry["id"] for entry in json.loads(archive.read("index.json"))["examples"]] == listed
    codeblocks = client.get(reverse("library_export") + f"?format=codeblocks&{page.context['filter_query']}")
    names = list(json.loads(unzip(codeblocks).read(SUMMARIES)))
    by_id = {example.pk: example for example in scored}
    assert names == [export_name(by_id[pk]) for pk in listed]


def test_a_search_is_ranked_among_the_whole_library_before_the_filters_as_the_page_does(
    client, curator, monkeypatch
):
    monkeypatch.setattr(semantic, "model_dir", lambda: None)  # full text only: which words match decides
    make_example(curator, "both", title="Quokka wombat census", tags=("marsupials",))
    make_example(curator, "one", title="Quokka photographs", tags=("photography",))
    params = {"q": "quokka wombat", "tag": "photography"}
    # One example has both words, and the filter leaves it out: the page lists nothing rather than falling
    # back to the examples with any of the words.
    assert client.get(reverse("library"), params).context["rows"] == []
    index = json.loads(unzip(client.get(reverse("library_export"), params)).read("index.json"))
    assert index["examples"] == []


def test_retracted_examples_and_older_versions_are_not_exported(client, curator):
    kept = make_example(curator, "kept")
    gone = make_example(curator, "gone")
    example_retract(example=gone, retracted_by=curator, reason="Wrong results.")
    newer = make_example(curator, "kept", title="Mean of squares, v2")

    archive = unzip(client.get(reverse("library_export")))
    assert [entry["id"] for entry in json.loads(archive.read("index.json"))["examples"]] == [newer.pk]
    assert not any(name.startswith((export_name(gone), export_name(kept))) for name in archive.namelist())


def test_a_retracted_example_downloads_with_its_retraction_in_the_metadata(client, curator):
    example = make_example(curator)
    example_retract(example=example, retracted_by=curator, reason="Wrong results.")

    archive = unzip(client.get(reverse("example_download", args=[example.pk])))
    metadata = json.loads(archive.read(f"{export_name(example)}/metadata.json"))
    assert metadata["status"] == "retracted" and metadata["retracted"]["reason"] == "Wrong results."


def test_one_example_downloads_as_a_folder(client, curator):
    example = make_example(curator)
    response = client.get(reverse("example_download", args=[example.pk]))
    assert response["Content-Disposition"] == f'attachment; filename="{export_name(example)}.zip"'
    archive = unzip(response)
    folder = export_name(example)
    assert sorted(archive.namelist()) == sorted(
        f"{folder}/{name}"
        for name in [
            "main.py",
            "requirements.txt",
            "runscript.sh",
            "metadata.json",
            "results.json",
            "README.md",
        ]
    )
    # How to run it outside our sandbox, in two commands: in the folder and in its metadata.
    readme = archive.read(f"{folder}/README.md").decode()
    assert "    pip install -r requirements.txt\n    python main.py\n" in readme
    metadata = json.loads(archive.read(f"{folder}/metadata.json"))
    assert metadata["how_to_run"] == ["pip install -r requirements.txt", "python main.py"]
    assert client.get(reverse("example_download", args=[example.pk + 100])).status_code == 404


def test_saved_files_that_became_links_or_were_never_listed_are_left_out(client, curator, tmp_path):
    example = make_example(curator)
    folder = example.files_dir / "to_save"
    folder.mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not ship")
    (folder / "link.txt").symlink_to(secret)
    (folder / "unlisted.txt").write_text("not listed")
    (folder / "sub").symlink_to(tmp_path)
    example.saved_files = [
        {"name": "link.txt", "size": 1},
        {"name": "sub/secret.txt", "size": 1},
        {"name": "../../../secret.txt", "size": 1},
        {"name": "missing.png", "size": 1},
    ]
    example.save()

    archive = unzip(client.get(reverse("example_download", args=[example.pk])))
    assert not any("to_save" in name for name in archive.namelist())
    assert all(b"do not ship" not in archive.read(name) for name in archive.namelist())


def test_an_unsafe_file_name_in_an_example_is_left_out_and_a_reserved_one_renamed(client, curator):
    example = make_example(
        curator, files={"main.py": "print(1)\n", "../evil.py": "x", "/abs.py": "x", "metadata.json": "{}"}
    )
    names = unzip(client.get(reverse("example_download", args=[example.pk]))).namelist()
    folder = export_name(example)
    assert sorted(names) == sorted(
        f"{folder}/{name}" for name in ["main.py", "example_metadata.json", "metadata.json", "results.json"]
    )


def test_export_needs_a_login_or_a_token_when_the_library_is_not_public(
    client, reader_client, curator, settings
):
    example = make_example(curator)
    settings.LIBRARY_PUBLIC = False
    for url in (reverse("library_export"), reverse("example_download", args=[example.pk])):
        # What an agent gets is the API's 401, in JSON, with CORS: not the login page.
        response = client.get(url)
        assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer realm="codedistiller"'
        assert response.json() == {"error": "Authentication required: send 'Authorization: Bearer <token>'."}
        assert response["Access-Control-Allow-Origin"] == "*"
        assert client.get(url, HTTP_AUTHORIZATION="Bearer nope").json() == {"error": "Invalid token."}
        # A person who followed a link in a browser is sent to log in.
        browser = client.get(url, HTTP_ACCEPT="text/html,*/*;q=0.8")
        assert browser.status_code == 302 and "/accounts/login/" in browser["Location"]
    assert unzip(reader_client.get(reverse("library_export"))).namelist()


def test_downloads_answer_cors_preflight_and_json_errors(client, curator):
    example = make_example(curator)
    for url in (reverse("library_export"), reverse("example_download", args=[example.pk])):
        preflight = client.options(url, HTTP_ORIGIN="https://agent.example")
        assert preflight.status_code == 204 and preflight["Access-Control-Allow-Headers"] == "Authorization"
        assert client.get(url)["Access-Control-Allow-Origin"] == "*"
    missing = client.get(reverse("example_download", args=[999]))
    assert missing.status_code == 404 and missing.json() == {"error": "There is no example 999."}
    saved = client.get(reverse("example_file", args=[example.pk, "nothing.png"]))
    assert saved.status_code == 404 and saved.json() == {"error": "No such saved file."}
    nan = client.get(reverse("library_export"), {"min_score": "nan"})  # index.json would have said NaN
    assert nan.status_code == 400 and nan.json() == {"error": "min_score must be a finite number, not 'nan'"}
    unknown = client.get(reverse("library_export"), {"library": "scipy"})
    assert unknown.status_code == 400 and unknown.json()["unknown"] == ["library"]


def test_export_refuses_bad_parameters_and_writes(client, curator):
    assert client.get(reverse("library_export"), {"format": "tar"}).status_code == 400
    assert client.get(reverse("library_export"), {"gpu": "maybe"}).status_code == 400
    response = client.get(reverse("library_export"), {"score": "5+"})
    assert (
        response.status_code == 400 and b"score must be one of 4+, 3-4, under-3, unscored" in response.content
    )
    assert client.get(reverse("library_export"), {"usage": "all"}).status_code == 400
    assert client.get(reverse("library_export"), {"sort": "random"}).status_code == 400
    assert client.post(reverse("library_export")).status_code == 405


def test_an_empty_library_exports_an_empty_index(client):
    index = json.loads(unzip(client.get(reverse("library_export"))).read("index.json"))
    assert index["count"] == 0 and index["examples"] == []


# A paper's example: main.py imports its own modules and reads its own config.
PAPER_FILES = {
    "main.py": "from __future__ import annotations\n\nimport yaml_free_config\nfrom squares import square_all\n"
    "from utils import total\n\nprint('total', total(square_all(yaml_free_config.VALUES)))\n",
    "squares.py": "def square_all(xs):\n    return [x * x for x in xs]\n",
    "utils.py": "def total(xs):\n    return sum(xs)\n",
    "yaml_free_config.py": "VALUES = [int(v) for v in open(__file__.replace('yaml_free_config.py', "
    "'config.yaml')).read().split(':')[1].split(',')]\n",
    "config.yaml": "values: 1,2,3\n",
    "requirements.txt": "",
    "runscript.sh": "pip install -r requirements.txt\n",
}


def test_a_multi_file_example_exports_one_codeblock_that_carries_and_runs_every_file(
    client, curator, tmp_path
):
    example = make_example(curator, "squares", files=PAPER_FILES)
    archive = unzip(client.get(reverse("library_export"), {"format": "codeblocks"}))
    code = parse_codeblock(archive.read(f"{export_name(example)}.py").decode())["code"]

    for name in ("squares.py", "utils.py", "config.yaml", "yaml_free_config.py"):
        assert repr(PAPER_FILES[name]) in code, name
    assert "runscript.sh" not in code and code.startswith("from __future__ import annotations\n")
    # Run as CodeScientist would get it: one file alone in a folder.
    (tmp_path / "block.py").write_text(code)
    done = subprocess.run(
        [sys.executable, "block.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "total 14\n"
