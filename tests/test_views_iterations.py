import os
import re

import pytest
from django.urls import reverse

from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db

XSS = '<script>alert(1)</script>"><img src=x onerror=alert(1)>'
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


def detail_url(iteration):
    return reverse("iteration_detail", args=[iteration.run_id, iteration.number])


def file_url(iteration, path):
    return reverse("iteration_file", args=[iteration.run_id, iteration.number, path])


def diff_url(run, **params):
    query = "&".join(f"{key}={value}" for key, value in params.items())
    return reverse("run_diff", args=[run.pk]) + (f"?{query}" if query else "")


def save_files(iteration, files: dict[str, bytes]):
    """Write files under the iteration's to_save/ and list them, as the pipeline does."""
    folder = iteration.output_dir / "to_save"
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    iteration.saved_files = [{"name": name, "size": len(content)} for name, content in files.items()]
    iteration.save()


def assert_no_markup(html: str):
    assert "<script>alert(1)" not in html
    assert "<img src=x" not in html
    assert XSS_ESCAPED in html


@pytest.fixture
def run():
    return make_run()


@pytest.fixture
def two(run):
    first = make_iteration(run, 1, main="import json\nprint('one')\nx = 1\n")
    second = make_iteration(run, 2, main="import json\nprint('two')\nx = 1\ny = 2\n")
    return first, second


# The iteration page -------------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_log_in(client, two):
    for url in (detail_url(two[0]), file_url(two[0], "plot.png"), diff_url(two[0].run)):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("login"))


def test_any_logged_in_user_reads_the_iteration_page(reader_client, curator_client, expert_client, two):
    for client in (reader_client, curator_client, expert_client):
        response = client.get(detail_url(two[1]))
        assert response.status_code == 200
        assert b"Iteration 2" in response.content


def test_a_missing_run_or_iteration_is_404(reader_client, two):
    run = two[0].run
    assert reader_client.get(reverse("iteration_detail", args=[run.pk, 9])).status_code == 404
    assert reader_client.get(reverse("iteration_detail", args=[run.pk + 1, 1])).status_code == 404
    assert reader_client.get(reverse("iteration_file", args=[run.pk, 9, "a.png"])).status_code == 404


def test_it_highlights_each_file_with_numbered_anchored_lines(reader_client, two):
    html = reader_client.get(detail_url(two[1])).content.decode()
    assert 'id="main.py-L3"' in html and 'href="#main.py-L3"' in html
    assert 'id="main.py-L5"' not in html  # main.py has four lines
    assert 'id="requirements.txt-L1"' in html and 'id="runscript.sh-L1"' in html
    assert '<span class="kn">import</span>' in html  # pygments' Python lexer ran
    assert html.index("main.py-L1") < html.index("requirements.txt-L1") < html.index("runscript.sh-L1")


def test_it_shows_both_verdicts_the_change_log_and_the_metadata(reader_client, run):
    iteration = make_iteration(
        run,
        1,
        change_log="Switched to float64.",
        measured={"exit_ok": False, "results_ok": False, "passed": False, "reasons": ["exited with code 2"]},
        judgement=None,
        metadata={"description": "Fits a curve.", "example_type": "demonstration"},
    )
    html = reader_client.get(detail_url(iteration)).content.decode()
    assert "Switched to float64." in html
    assert "exited with code 2" in html
    assert "Not judged: the measurement failed." in html
    assert "Fits a curve." in html and "example_type" in html


def test_it_shows_the_judges_reasons(reader_client, run):
    judgement = {"faithful": True, "accurate": False, "complete": True, "passed": False,
                 "issues": ["rounding"], "critical_issues": ["wrong units"], "explanation": "Close, not right."}  # fmt: skip
    html = reader_client.get(detail_url(make_iteration(run, 1, judgement=judgement))).content.decode()
    assert "wrong units" in html and "rounding" in html and "Close, not right." in html


def test_it_navigates_to_the_neighbours_the_diff_and_the_run(reader_client, run):
    for number in (1, 2, 3):
        make_iteration(run, number)
    html = reader_client.get(reverse("iteration_detail", args=[run.pk, 2])).content.decode()
    assert f'href="{reverse("iteration_detail", args=[run.pk, 1])}"' in html
    assert f'href="{reverse("iteration_detail", args=[run.pk, 3])}"' in html
    assert f'href="{reverse("run_diff", args=[run.pk])}?a=1&amp;b=2"' in html
    assert f'href="{reverse("run_detail", args=[run.pk])}"' in html


def test_the_first_iteration_offers_no_diff_with_previous(reader_client, two):
    html = reader_client.get(detail_url(two[0])).content.decode()
    assert "Diff with previous" not in html


def test_it_shows_outputs_and_collapses_the_install_log(reader_client, run):
    iteration = make_iteration(
        run, 1, stdout="fitted 3 points\n", stderr="warning: slow\n", install_log="Collecting numpy"
    )
    html = reader_client.get(detail_url(iteration)).content.decode()
    assert "fitted 3 points" in html and "warning: slow" in html
    assert re.search(r"<details[^>]*>\s*<summary>Install log</summary>\s*<pre[^>]*>Collecting numpy", html)


def test_it_shows_flat_results_as_a_table_and_nested_ones_as_json(reader_client, run):
    flat = make_iteration(run, 1, results={"accuracy": 0.93, "model": "ridge"})
    html = reader_client.get(detail_url(flat)).content.decode()
    assert re.search(r"<td><code>accuracy</code></td><td>0.93</td>", html)
    nested = make_iteration(run, 2, results={"scores": {"a": 1}})
    html = reader_client.get(detail_url(nested)).content.decode()
    assert "<td><code>scores</code>" not in html
    assert '<span class="nt">"scores"</span>' in html  # pretty JSON, highlighted


def test_it_lists_saved_files_with_image_previews_and_downloads(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"plot.png": PNG, "table.csv": b"a,b\n1,2\n"})
    html = reader_client.get(detail_url(iteration)).content.decode()
    assert f'<img src="{file_url(iteration, "plot.png")}"' in html
    assert f'href="{file_url(iteration, "table.csv")}" download' in html
    assert "<img" not in html.split("table.csv")[1].split("</li>")[0]


def test_untrusted_text_is_never_markup_on_the_iteration_page(reader_client, run):
    iteration = make_iteration(
        run,
        1,
        files={"main.py": f"print('{XSS}')\n", f"{XSS}.py": XSS, "requirements.txt": XSS},
        stdout=XSS,
        stderr=XSS,
        install_log=XSS,
        change_log=XSS,
        metadata={XSS: XSS},
        results={XSS: XSS},
        log=[XSS],
        judgement={"passed": False, "explanation": XSS, "issues": [XSS], "critical_issues": [XSS]},
        measured={"passed": False, "reasons": [XSS], "diagnosis": [XSS]},
    )
    save_files(iteration, {"x.txt": b"x"})
    iteration.saved_files = [{"name": f"{XSS}.png", "size": 1}]
    iteration.save()
    assert_no_markup(reader_client.get(detail_url(iteration)).content.decode())


# Files from to_save/ ------------------------------------------------------------------------------------


def test_it_serves_a_listed_file_as_a_download(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"out/table.csv": b"a,b\n1,2\n"})
    response = reader_client.get(file_url(iteration, "out/table.csv"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == b"a,b\n1,2\n"
    assert response["Content-Disposition"].startswith("attachment")
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response["Content-Security-Policy"]


def test_it_shows_images_inline_and_svgs_without_script(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(
        iteration,
        {
            "plot.png": PNG,
            "drawing.svg": b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        },
    )
    png = reader_client.get(file_url(iteration, "plot.png"))
    assert png["Content-Type"] == "image/png" and png["Content-Disposition"].startswith("inline")
    svg = reader_client.get(file_url(iteration, "drawing.svg"))
    csp = svg["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp and "script-src" not in csp


def test_an_html_file_is_a_download_never_a_page(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"report.html": b"<script>alert(1)</script>"})
    response = reader_client.get(file_url(iteration, "report.html"))
    assert response["Content-Disposition"].startswith("attachment")
    assert response["Content-Type"] == "application/octet-stream"


def test_it_refuses_a_file_the_iteration_did_not_list(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"listed.txt": b"ok"})
    (iteration.output_dir / "to_save" / "unlisted.txt").write_text("secret")
    assert reader_client.get(file_url(iteration, "unlisted.txt")).status_code == 404


def test_it_refuses_paths_out_of_the_folder_even_when_listed(reader_client, run, data_dir):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"ok.txt": b"ok"})
    (data_dir / "secret.txt").write_text("secret")
    traversal = "../../../secret.txt"
    iteration.saved_files = [{"name": traversal, "size": 6}, {"name": "../../etc/passwd", "size": 1}]
    iteration.save()
    url = reverse("iteration_detail", args=[run.pk, 1]) + "files/"
    for path in (traversal, "../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd"):
        response = reader_client.get(url + path)
        assert response.status_code == 404, path
    assert reader_client.get(file_url(iteration, traversal)).status_code == 404


def test_it_refuses_a_symlink_pointing_out_of_the_folder(reader_client, run, data_dir):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"ok.txt": b"ok"})
    (data_dir / "secret.txt").write_text("secret")
    os.symlink(data_dir / "secret.txt", iteration.output_dir / "to_save" / "link.txt")
    os.symlink(data_dir, iteration.output_dir / "to_save" / "dir")
    iteration.saved_files = [{"name": "link.txt", "size": 6}, {"name": "dir/secret.txt", "size": 6}]
    iteration.save()
    assert reader_client.get(file_url(iteration, "link.txt")).status_code == 404
    assert reader_client.get(file_url(iteration, "dir/secret.txt")).status_code == 404


def test_a_listed_name_that_is_a_folder_or_a_fifo_is_404(reader_client, run):
    iteration = make_iteration(run, 1)
    save_files(iteration, {"plots/a.png": PNG})
    os.mkfifo(iteration.output_dir / "to_save" / "pipe.txt")
    iteration.saved_files = [{"name": "plots", "size": 0}, {"name": "pipe.txt", "size": 0}]
    iteration.save()
    assert reader_client.get(file_url(iteration, "plots")).status_code == 404
    assert reader_client.get(file_url(iteration, "pipe.txt")).status_code == 404


def test_a_listed_file_that_is_gone_is_404(reader_client, run):
    iteration = make_iteration(run, 1, saved_files=[{"name": "gone.png", "size": 3}])
    assert reader_client.get(file_url(iteration, "gone.png")).status_code == 404


# The diff page ------------------------------------------------------------------------------------------


def test_any_logged_in_user_reads_the_diff(reader_client, curator_client, two):
    for client in (reader_client, curator_client):
        assert client.get(diff_url(two[0].run, a=1, b=2)).status_code == 200


def test_a_diff_of_a_missing_run_is_404(reader_client):
    assert reader_client.get(reverse("run_diff", args=[999])).status_code == 404


def test_by_default_it_compares_the_latest_iteration_with_the_one_before(reader_client, run):
    for number in (1, 2, 3):
        make_iteration(run, number, main=f"print({number})\n")
    response = reader_client.get(diff_url(run))
    assert (response.context["a"], response.context["b"]) == (2, 3)
    assert "Iteration 2 → 3" in response.content.decode()


def test_given_only_b_it_compares_b_with_the_one_before(reader_client, run):
    for number in (1, 2, 3):
        make_iteration(run, number, main=f"print({number})\n")
    response = reader_client.get(diff_url(run, b=2))
    assert (response.context["a"], response.context["b"]) == (1, 2)


def test_it_shows_added_and_removed_lines_with_counts(reader_client, two):
    response = reader_client.get(diff_url(two[0].run, a=1, b=2))
    diff = response.context["diff"]
    assert (diff.added, diff.removed) == (2, 1)
    html = response.content.decode()
    assert re.search(r'<tr class="diff--del">.*one', html)
    assert re.search(r'<tr class="diff--add">.*two', html)
    assert 'class="count count--add">+2<' in html and 'class="count count--del">−1<' in html


def test_the_side_by_side_view_puts_removals_left_and_additions_right(reader_client, two):
    html = reader_client.get(diff_url(two[0].run, a=1, b=2, view="split")).content.decode()
    # The unified table comes along only for narrow windows (the stylesheet shows one of the two).
    assert "diff--split" in html and 'class="diff diff--unified diff-narrow hl"' in html
    assert re.search(
        r'<td class="diff__text diff--del">.*one.*</td><td class="diff__num diff--add">2</td>', html
    )
    assert f'href="/runs/{two[0].run_id}/diff/?a=1&amp;b=2&amp;view=unified"' in html


def test_ignoring_whitespace_changes_the_counts_and_keeps_the_text(reader_client, run):
    make_iteration(run, 1, main="def f():\n    return 1\n\nx = f()\n")
    make_iteration(run, 2, main="def f():\n        return 1\n\nx  =  f()\ny = 2\n")
    strict = reader_client.get(diff_url(run, a=1, b=2)).context["diff"]
    assert (strict.added, strict.removed) == (3, 2)
    response = reader_client.get(diff_url(run, a=1, b=2, ws="ignore"))
    assert (response.context["diff"].added, response.context["diff"].removed) == (1, 0)
    html = response.content.decode()
    assert "Show whitespace changes" in html
    assert (
        '<span class="n">x</span>  <span class="o">=</span>  <span class="n">f</span>' in html
    )  # the new side as written


def test_it_detects_a_renamed_file(reader_client, run):
    body = "".join(f"value_{i} = {i}\n" for i in range(20))
    make_iteration(run, 1, files={"main.py": "import helpers\n", "helpers.py": body})
    make_iteration(run, 2, files={"main.py": "import utils\n", "utils.py": body + "extra = 1\n"})
    response = reader_client.get(diff_url(run, a=1, b=2))
    [renamed] = [f for f in response.context["diff"].files if f.status == "renamed"]
    assert (renamed.old_name, renamed.new_name, renamed.added, renamed.removed) == (
        "helpers.py",
        "utils.py",
        1,
        0,
    )
    assert "helpers.py → utils.py" in response.content.decode()


def test_it_lists_added_and_removed_files(reader_client, run):
    make_iteration(run, 1, files={"main.py": "print(1)\n", "old_notes.txt": "alpha\nbeta\n"})
    make_iteration(run, 2, files={"main.py": "print(1)\n", "config.yaml": "seed: 3\nsteps: 10\nrate: 0.1\n"})
    response = reader_client.get(diff_url(run, a=1, b=2))
    statuses = {f.name: (f.status, f.added, f.removed) for f in response.context["diff"].files}
    assert statuses == {
        "main.py": ("unchanged", 0, 0),
        "old_notes.txt": ("removed", 0, 2),
        "config.yaml": ("added", 3, 0),
    }
    assert (response.context["diff"].added, response.context["diff"].removed) == (3, 2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"a": "x", "b": "2"}, "“a” must be an iteration number."),
        ({"a": "1", "b": "-2"}, "“b” must be an iteration number."),
        ({"a": "1", "b": "7"}, "This run has no iteration 7."),
        ({"a": "2", "b": "2"}, "Choose two different iterations to compare."),
        ({"a": "1", "b": "١"}, "“b” must be an iteration number."),
    ],
)
def test_bad_parameters_get_a_clear_message(reader_client, two, params, message):
    response = reader_client.get(diff_url(two[0].run, **params))
    assert response.status_code == 400
    assert message in response.content.decode()
    assert "diff" not in response.context


def test_a_run_with_one_iteration_says_there_is_nothing_to_compare(reader_client, run):
    make_iteration(run, 1)
    response = reader_client.get(diff_url(run))
    assert response.status_code == 200
    assert "fewer than two iterations" in response.content.decode()


def test_the_selectors_choose_a_and_b(reader_client, run):
    for number in (1, 2, 3):
        make_iteration(run, number)
    html = reader_client.get(diff_url(run, a=1, b=3)).content.decode()
    assert re.search(r'<select name="a">.*<option value="1" selected>', html)
    assert re.search(r'<select name="b">.*<option value="3" selected>', html)


def test_an_htmx_request_gets_only_the_diff_fragment(reader_client, two):
    response = reader_client.get(diff_url(two[0].run, a=1, b=2, view="split"), headers={"HX-Request": "true"})
    html = response.content.decode()
    assert html.lstrip().startswith('<div id="diff"')
    assert "<html" not in html
    assert "HX-Request" in response["Vary"]


def test_untrusted_text_is_never_markup_on_the_diff_page(reader_client, run):
    make_iteration(run, 1, files={"main.py": "print(1)\n", f"{XSS}.py": "a = 1\n", "gone.txt": XSS})
    make_iteration(run, 2, files={"main.py": f"print('{XSS}')\n", f"{XSS}.txt": XSS + "\nb\n"})
    for view in ("unified", "split"):
        assert_no_markup(reader_client.get(diff_url(run, a=1, b=2, view=view)).content.decode())


def test_a_failed_iteration_shows_the_likely_cause_read_from_its_output(reader_client, run):
    finding = "the module 'scipy' is not installed: add 'scipy>=1.0' to requirements.txt"
    iteration = make_iteration(
        run, 1, exit_code=1, measured={"passed": False, "reasons": ["the program exited with code 1"],
                                       "diagnosis": [finding]},
    )  # fmt: skip

    html = reader_client.get(detail_url(iteration)).content.decode()

    assert "Likely cause" in html and "add &#x27;scipy&gt;=1.0&#x27; to requirements.txt" in html


def test_it_shows_the_sandboxs_notes_and_cpu_time_on_the_iteration_and_run_pages(reader_client, run):
    note = "3 saved files were left out: past 500 files or 512 MB <b>"
    iteration = make_iteration(run, 1, sandbox={"notes": [note], "cpu_secs": 12.34, "out_of_memory": False})

    pages = [reader_client.get(url).content.decode() for url in (detail_url(iteration), f"/runs/{run.pk}/")]

    for html in pages:
        assert "3 saved files were left out: past 500 files or 512 MB &lt;b&gt;" in html
    assert "12.3 s" in pages[0]
