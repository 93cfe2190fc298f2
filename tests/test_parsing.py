import json

import pytest

from distill.pipeline.parsing import (
    ReplyError,
    extract_json,
    parse_judgement,
    parse_program,
    parse_ratings,
    prose,
)
from tests.replies import program, verdict


def test_a_program_reply_is_split_into_files_and_metadata():
    parsed = parse_program(program(requirements="numpy==2.1.0"))
    assert set(parsed.files) == {"main.py", "requirements.txt", "runscript.sh"}
    assert "mean_squared" in parsed.files["main.py"]
    assert parsed.files["requirements.txt"] == "numpy==2.1.0\n"
    assert parsed.metadata.description.startswith("Computes")


def test_backticks_inside_the_code_survive():
    main = 'DOC = """\n```python\nprint(1)\n```\n"""\nprint(DOC)\n'
    parsed = parse_program(program(main))
    assert parsed.files["main.py"] == main


def test_one_fence_around_a_whole_file_is_removed():
    parsed = parse_program(program("```python\nprint('hi')\n```"))
    assert parsed.files["main.py"] == "print('hi')\n"
    # A fence on one side only is no part of the file either.
    assert parse_program(program("print('hi')\n```")).files["main.py"] == "print('hi')\n"
    assert parse_program(program("```python\nprint('hi')")).files["main.py"] == "print('hi')\n"


def test_a_missing_file_is_named():
    reply = program().replace("=== FILE: runscript.sh ===", "=== FILE: run.sh ===")
    with pytest.raises(ReplyError, match="runscript.sh"):
        parse_program(reply)


def test_the_formats_placeholders_copied_instead_of_content_are_refused():
    copied = program(requirements="<one pip requirement a line, pinned where it matters>")
    with pytest.raises(ReplyError, match="requirements.txt holds the format's placeholder"):
        parse_program(copied)
    with pytest.raises(ReplyError, match="main.py holds the format's placeholder '<the complete program>'"):
        parse_program(program("import json\n<the complete program>\n"))
    # Held by the grammar to no space there, the 1.5B model joined the placeholder's words instead.
    with pytest.raises(ReplyError, match="main.py holds the format's placeholder '<the.complete.program>'"):
        parse_program(program("<the.complete.program>\n"))
    with pytest.raises(ReplyError, match="main.py holds the format's placeholder '<theupdated,complete,prog"):
        parse_program(program("<theupdated,complete,program>\n"))
    with pytest.raises(
        ReplyError, match="requirements.txt holds the format's placeholder '<onlypackagesmain"
    ):
        parse_program(program(requirements="<onlypackagesmain.pyneedsbeyond...\n"))
    with pytest.raises(ReplyError, match="runscript.sh holds the format's placeholder"):
        parse_program(program(runscript="<bash_commands_that_install_the_dependencies_only,_e.g._pip>\n"))
    # Angle brackets in real code and requirements are content, not placeholders.
    real = program(
        "print('<b>bold</b>')\nx = 1 < 2 > 0\n", requirements="numpy<3\n<br>\n<my_tag>\n<blockquote>\n"
    )
    assert parse_program(real).files["main.py"].startswith("print('<b>")


def test_a_reply_that_starts_over_is_cut_where_it_repeats():
    first = program(requirements="numpy==2.1.0")
    echo = "\n".join(["Changes made so far:", "=== FILE: main.py ===", "print('echoed')", "=== END ==="])

    parsed = parse_program(first.removesuffix("=== END ===") + echo)

    assert parsed == parse_program(first)
    assert "echoed" not in parsed.files["main.py"]
    # Repeating before the answer is whole leaves it incomplete: that is still a reply to repair.
    early = "=== FILE: main.py ===\nprint(1)\n=== FILE: main.py ===\nprint(2)\n"
    with pytest.raises(ReplyError, match="missing file section"):
        parse_program(early)


def test_metadata_that_copies_the_formats_choices_gets_the_defaults():
    copied = {"description": "Knee points.", "example_type": "demonstration | tutorial | benchmark | workflow",
              "compute_needs": "cpu | gpu, with rough memory and time"}  # fmt: skip
    parsed = parse_program(program(metadata=copied))
    assert (parsed.metadata.example_type, parsed.metadata.compute_needs) == ("demonstration", "cpu")
    chosen = parse_program(
        program(metadata={**copied, "example_type": "tutorial", "compute_needs": "cpu, 1 GB"})
    )
    assert (chosen.metadata.example_type, chosen.metadata.compute_needs) == ("tutorial", "cpu, 1 GB")


def test_metadata_that_copies_the_formats_descriptions_is_treated_as_absent():
    copied = {"description": "Knee points.", "inclusion_criteria": "when to use this example",
              "exclusion_criteria": "When not to use it."}  # fmt: skip
    parsed = parse_program(program(metadata=copied))
    assert (parsed.metadata.inclusion_criteria, parsed.metadata.exclusion_criteria) == ("", "")
    # A description that only copies the format's is none: the reply goes back to be repaired.
    with pytest.raises(ReplyError, match="metadata: description"):
        parse_program(program(metadata={**copied, "description": "what the example demonstrates"}))
    real = parse_program(
        program(metadata={**copied, "inclusion_criteria": "When to use this example: never."})
    )
    assert real.metadata.inclusion_criteria == "When to use this example: never."


def test_a_plain_text_answer_loses_the_fences_it_was_not_asked_for():
    assert prose("```markdown\nminilib computes statistics.\n\nIts entry point is `mean`.\n```\n") == (
        "minilib computes statistics.\n\nIts entry point is `mean`."
    )
    assert prose("Purpose:\n```\nkneed finds knees.\n```") == "Purpose:\nkneed finds knees."


def test_missing_or_broken_metadata_is_refused():
    with pytest.raises(ReplyError, match="METADATA"):
        parse_program(program().split("=== METADATA ===")[0])
    with pytest.raises(ReplyError, match="JSON"):
        parse_program(program().replace('"description"', "description"))


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd", "a/../../b.py", "bad name.py"])
def test_file_names_must_be_plain_relative_paths(name):
    reply = program().replace("=== FILE: main.py ===", f"=== FILE: {name} ===\nx = 1\n=== FILE: main.py ===")
    with pytest.raises(ReplyError, match="plain relative path"):
        parse_program(reply)


def test_a_fix_must_say_what_it_changed():
    with pytest.raises(ReplyError, match="CHANGES"):
        parse_program(program(), require_change_log=True)
    assert (
        parse_program(program(changes="Fixed the import."), require_change_log=True).change_log
        == "Fixed the import."
    )


def test_ratings_keep_only_the_files_asked_about():
    reply = 'Sure!\n[{"path": "a.py", "rating": 9, "reason": "core"}, {"path": "zzz.py", "rating": 3}]'
    assert set(parse_ratings(reply, expected_paths=["a.py", "b.py"])) == {"a.py"}


def test_a_rating_out_of_range_is_refused():
    with pytest.raises(ReplyError, match="rating"):
        parse_ratings('[{"path": "a.py", "rating": 42}]', expected_paths=["a.py"])


def test_a_verdict_in_a_fence_with_prose_around_it_is_read():
    judged = parse_judgement("My verdict:\n" + verdict(True) + "\nThanks.")
    assert judged.passed
    assert not parse_judgement(verdict(False)).passed


def test_a_verdict_with_a_critical_issue_does_not_pass():
    assert not parse_judgement(verdict(True, critical_issues=["prints hard-coded numbers"])).passed


def test_no_json_at_all_is_a_reply_error():
    with pytest.raises(ReplyError):
        extract_json("I cannot do that.", expect=dict)
    with pytest.raises(ReplyError, match="verdict"):
        parse_judgement('{"faithful": "maybe"}')


def test_a_judge_that_copies_the_prompts_placeholders_has_not_found_anything():
    # Seen from the local model: a good run judged faithful, accurate and complete, failed by the echo.
    echoed = json.dumps({"faithful": True, "accurate": True, "complete": True,
                         "issues": ["Minor problems.", "the plot has no title"],
                         "critical_issues": ["problems that make it  unusable as an example"],
                         "explanation": "two or three sentences"})  # fmt: skip

    judged = parse_judgement(echoed)

    assert judged.passed
    assert (judged.critical_issues, judged.issues, judged.explanation) == ([], ["the plot has no title"], "")
    real = parse_judgement(echoed.replace("that make it  unusable", "that make it useless"))
    assert not real.passed and real.critical_issues == ["problems that make it useless as an example"]


def test_a_rating_reason_that_copies_the_placeholder_is_absent():
    reply = '[{"path": "a.py", "rating": 7, "reason": "One short sentence."}]'
    assert parse_ratings(reply, expected_paths=["a.py"])["a.py"].reason == ""


def test_metadata_that_copies_the_formats_description_is_refused_as_missing():
    copied = {
        "description": "what the example demonstrates",
        "inclusion_criteria": "when to use this example",
    }
    with pytest.raises(ReplyError, match="metadata: description: Field required"):
        parse_program(program(metadata=copied))


TEMPLATE_METADATA = (
    '{"description": "what the example demonstrates", "inclusion_criteria": "when to use this example",\n'
    ' "exclusion_criteria": "when not to use it", "example_type": "demonstration | tutorial | benchmark | '
    'workflow",\n "compute_needs": "cpu | gpu, with rough memory and time", "gpu_required": false,\n'
    ' "api_keys_needed": [], "python_version": "3.11"}'
)


def test_a_fix_that_copies_the_metadata_template_keeps_the_failed_versions_metadata():
    # Seen on pwlf: three fix replies in a row sent the format's metadata template back.
    reply = program(changes="Root cause: a list.").replace(
        program().split("=== METADATA ===\n")[1].split("\n=== END")[0], TEMPLATE_METADATA
    )
    with pytest.raises(ReplyError, match="metadata: description"):
        parse_program(reply, require_change_log=True)
    previous = {"description": "Fits a piecewise linear model.", "example_type": "demonstration"}

    parsed = parse_program(reply, require_change_log=True, metadata_default=previous)

    assert parsed.metadata.description == "Fits a piecewise linear model."
    assert parsed.metadata.python_version == "3.11"  # what the reply did write is kept
    without = reply.split("=== METADATA ===")[0] + "=== CHANGES ===\nRoot cause: a list.\n"
    assert (
        parse_program(without, require_change_log=True, metadata_default=previous).metadata == parsed.metadata
    )
