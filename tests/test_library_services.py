import pytest

from library.models import Example
from library.services import LibraryRefused, example_approve, example_retract, run_reject
from tests.factories import make_iteration, make_run

pytestmark = pytest.mark.django_db


def approve(run, curator, **kwargs):
    kwargs.setdefault("title", "Mean of squares with minilib")
    kwargs.setdefault("summary", "Computes minilib.mean_squared on three numbers.")
    return example_approve(run=run, approved_by=curator, **kwargs)


def test_it_approves_the_final_successful_iteration_by_default(curator):
    run = make_run()
    make_iteration(run, 1, succeeded=False)
    make_iteration(run, 2, main="print('v2')\n")
    make_iteration(run, 3, succeeded=False)
    example = approve(run, curator, tags=["Statistics", "statistics", "tiny data"])

    assert example.iteration_number == 2 and example.files["main.py"] == "print('v2')\n"
    assert example.source_url == run.source_url and example.commit_sha == run.commit_sha
    assert example.run == run and example.approved_by == curator and example.approved_at
    assert example.model_code == run.config["model_code"]
    assert sorted(example.tags.values_list("name", flat=True)) == ["statistics", "tiny-data"]
    assert example.version == 1 and example.is_latest and example.status == Example.Status.APPROVED


def test_it_does_not_approve_a_failed_iteration_without_a_reason(curator):
    run = make_run(status="failed")
    failed = make_iteration(run, 1, succeeded=False)
    with pytest.raises(LibraryRefused, match="no successful iteration"):
        approve(run, curator)
    with pytest.raises(LibraryRefused, match="needs a reason"):
        approve(run, curator, iteration=failed)
    example = approve(
        run, curator, iteration=failed, override_reason="Only the plot step fails; the rest is right."
    )
    assert example.override_reason.startswith("Only the plot")


def test_an_iteration_is_approved_once(curator):
    run = make_run()
    make_iteration(run, 1)
    approve(run, curator)
    with pytest.raises(LibraryRefused, match="already in the library"):
        approve(run, curator)


def test_a_newer_run_of_the_same_source_makes_a_new_version(curator):
    first, second = make_run(), make_run()
    make_iteration(first, 1)
    make_iteration(second, 1)
    old, new = approve(first, curator), approve(second, curator)
    old.refresh_from_db()

    assert (old.version, new.version) == (1, 2)
    assert not old.is_latest and new.is_latest
    assert list(Example.objects.listed()) == [new]
    assert list(Example.objects.versions_of(first.source_url)) == [new, old]


def test_retracting_the_newest_version_hands_the_library_back_to_the_previous(curator):
    first, second = make_run(), make_run()
    make_iteration(first, 1)
    make_iteration(second, 1)
    old, new = approve(first, curator), approve(second, curator)
    new = example_retract(example=new, retracted_by=curator, reason="It uses a deprecated API.")
    old.refresh_from_db()

    assert new.is_retracted and new.retracted_reason == "It uses a deprecated API." and not new.is_latest
    assert old.is_latest and list(Example.objects.listed()) == [old]
    with pytest.raises(LibraryRefused, match="already been retracted"):
        example_retract(example=new, retracted_by=curator, reason="again")
    with pytest.raises(LibraryRefused, match="why"):
        example_retract(example=old, retracted_by=curator, reason=" ")


def test_a_run_is_rejected_with_a_reason_once_it_has_finished(curator):
    run = make_run(status="executing")
    with pytest.raises(LibraryRefused, match="still executing"):
        run_reject(run=run, rejected_by=curator, reason="Fake results.")
    run.status = "succeeded"
    run.save()
    with pytest.raises(LibraryRefused, match="why"):
        run_reject(run=run, rejected_by=curator, reason="")
    rejection = run_reject(run=run, rejected_by=curator, reason="Fake results.")
    assert rejection.run == run and rejection.rejected_by == curator


def test_saved_files_are_copied_but_links_are_not(curator, tmp_path):
    run = make_run()
    iteration = make_iteration(
        run, 1, saved_files=[{"name": "plot.png", "size": 4}, {"name": "link", "size": 1}]
    )
    folder = iteration.output_dir / "to_save"
    folder.mkdir(parents=True)
    (folder / "plot.png").write_bytes(b"\x89PNG")
    (folder / "link").symlink_to("/etc/hostname")
    example = approve(run, curator)

    assert example.saved_files == [{"name": "plot.png", "size": 4}]
    assert (example.files_dir / "to_save" / "plot.png").read_bytes() == b"\x89PNG"
    assert not (example.files_dir / "to_save" / "link").exists()


def test_the_proof_figures_go_with_the_example_for_the_usage_facet(curator):
    run = make_run()
    make_iteration(
        run, 1, proof={"verdict": "proven"}, repo_modules_imported=2, repo_functions_executed=5,
        repo_lines_executed=40, repo_share_covered=0.25,
    )  # fmt: skip
    example = approve(run, curator)

    assert example.usage == {
        "verdict": "proven", "repo_modules_imported": 2, "repo_functions_executed": 5,
        "repo_lines_executed": 40, "repo_share_covered": 0.25,
    }  # fmt: skip
    assert list(Example.objects.usage_band("tenth")) == [example]
