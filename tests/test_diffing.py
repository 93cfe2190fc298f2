import random

import pytest

from distill.diffing import choose_pair, diff_files, diff_texts, pair_files, similarity
from distill.highlight import anchor_prefix, code_files, highlight_lines, lexer_for, split_lines, stylesheet

# Highlighting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "lexer"),
    [
        ("main.py", "Python"),
        ("runscript.sh", "Bash"),
        ("notes.txt", "Text only"),
        ("requirements.txt", "Text only"),
        ("requirements-dev.in", "Text only"),
        ("config.yaml", "YAML"),
        ("no_suffix", "Text only"),
        ("weird.zzzz", "Text only"),
    ],
)
def test_the_lexer_comes_from_the_file_name(name, lexer):
    assert lexer_for(name).name == lexer


def test_it_highlights_one_balanced_html_string_per_line():
    lines = highlight_lines("main.py", 'x = """a\nb"""\n\n\nprint(x)\n')
    assert len(lines) == 5
    assert lines[2] == lines[3] == ""
    assert all(line.count("<span") == line.count("</span>") for line in lines)
    assert "<span" in lines[1]  # the string token continues on its second line, in its own span


def test_leading_blank_lines_keep_their_numbers():
    assert highlight_lines("main.py", "\n\nx = 1")[2].startswith('<span class="n">x</span>')


def test_highlighted_text_is_escaped():
    [line] = highlight_lines("main.py", "s = '<script>alert(1)</script>'")
    assert "<script>" not in line and "&lt;script&gt;" in line


def test_crlf_and_lone_cr_end_lines():
    assert split_lines("a\r\nb\rc\n") == ["a", "b", "c"]
    assert split_lines("") == [] and split_lines("\n") == [""]


def test_anchors_hold_no_spaces_or_hashes():
    assert anchor_prefix("my file#1.py") == "my_file_1.py"


def test_the_program_files_come_first():
    names = [
        f.name
        for f in code_files(
            {"z.py": "", "runscript.sh": "", "a.py": "", "main.py": "", "requirements.txt": ""}
        )
    ]
    assert names == ["main.py", "requirements.txt", "runscript.sh", "a.py", "z.py"]


def test_the_stylesheet_only_styles_highlighted_code():
    rules = stylesheet().splitlines()
    assert rules and all(rule.startswith(".hl .") for rule in rules)


# Diffs --------------------------------------------------------------------------------------------------


def test_it_counts_added_and_removed_lines():
    hunks, added, removed = diff_texts("a\nb\nc\n", "a\nB\nc\nd\n", old_name="x.py")
    assert (added, removed) == (2, 1)
    assert [(line.kind, line.old_number, line.new_number) for line in hunks[0].lines] == [
        ("context", 1, 1),
        ("del", 2, None),
        ("add", None, 2),
        ("context", 3, 3),
        ("add", None, 4),
    ]
    assert hunks[0].header == "@@ -1,3 +1,4 @@"


def test_identical_texts_have_no_hunks():
    assert diff_texts("a\n", "a\n") == ([], 0, 0)


def test_distant_changes_make_separate_hunks_with_three_lines_of_context():
    old = "".join(f"line {i}\n" for i in range(1, 31))
    new = old.replace("line 2\n", "line two\n").replace("line 28\n", "line twenty-eight\n")
    hunks, _, _ = diff_texts(old, new)
    assert [h.header for h in hunks] == ["@@ -1,5 +1,5 @@", "@@ -25,6 +25,6 @@"]


def test_a_text_added_from_nothing_starts_at_line_one():
    hunks, added, removed = diff_texts("", "a\nb\n")
    assert (added, removed) == (2, 0)
    assert hunks[0].header == "@@ -0,0 +1,2 @@"


def test_ignoring_whitespace_compares_normalised_lines_and_shows_them_as_written():
    old, new = "if x:\n    y = 1\n", "if x:\n        y  =  1\n"
    assert diff_texts(old, new)[1:] == (1, 1)
    hunks, added, removed = diff_texts(old, new, ignore_whitespace=True)
    assert (hunks, added, removed) == ([], 0, 0)
    hunks, added, removed = diff_texts(old, new + "z = 2\n", ignore_whitespace=True, old_name="a.py")
    assert (added, removed) == (1, 0)
    context = [line for line in hunks[0].lines if line.kind == "context"]
    assert context[-1].html.startswith("        ")  # the new side's indentation
    assert context[-1].old_html.startswith("    <span")  # and the old side's, for the left column


def test_side_by_side_rows_pair_removals_with_the_additions_after_them():
    hunks, _, _ = diff_texts("a\nb\nc\nd\n", "a\nB\nC\nD2\nE\nd\n")
    rows = hunks[0].split_rows
    pairs = [
        (row.left and (row.left.kind, row.left.number), row.right and (row.right.kind, row.right.number))
        for row in rows
    ]
    assert pairs == [
        (("context", 1), ("context", 1)),
        (("del", 2), ("add", 2)),
        (("del", 3), ("add", 3)),
        (None, ("add", 4)),
        (None, ("add", 5)),
        (("context", 4), ("context", 6)),
    ]


def test_when_every_other_line_changed_each_function_stays_matched_to_itself():
    old = "".join(f"def f_{i}(x):\n    return x * {i}\n\n" for i in range(1000))
    new = "".join(f"def f_{i}(x):\n    return  x * {i}\n\n" for i in range(1000))
    hunks, added, removed = diff_texts(old, new)
    assert (added, removed) == (1000, 1000)
    assert all(
        line.old_number == line.new_number for hunk in hunks for line in hunk.lines if line.kind == "context"
    )


@pytest.mark.parametrize("seed", range(30))
def test_the_hunks_turn_the_old_text_into_the_new_one(seed):
    rng = random.Random(seed)
    old = [rng.choice("abcdefgh") * rng.randint(1, 2) for _ in range(rng.randint(0, 60))]
    new = list(old)
    for _ in range(rng.randint(0, 15)):
        position = rng.randint(0, len(new))
        if rng.random() < 0.5 and position < len(new):
            del new[position]
        else:
            new.insert(position, rng.choice(["x", "y", "a", "zz", ""]))
    old_text, new_text = "".join(f"{line}\n" for line in old), "".join(f"{line}\n" for line in new)
    hunks, added, removed = diff_texts(old_text, new_text, context=10_000)
    if not hunks:
        assert old == new
        return
    [hunk] = hunks  # all the context there is: one hunk covers both texts
    rebuilt_old = [old[line.old_number - 1] for line in hunk.lines if line.kind != "add"]
    rebuilt_new = [new[line.new_number - 1] for line in hunk.lines if line.kind != "del"]
    assert (rebuilt_old, rebuilt_new) == (old, new)
    assert all(
        old[line.old_number - 1] == new[line.new_number - 1] for line in hunk.lines if line.kind == "context"
    )
    assert added == sum(line.kind == "add" for line in hunk.lines) >= len(new) - len(old)


def test_similar_removed_and_added_files_are_a_rename():
    body = "".join(f"value_{i} = {i}\n" for i in range(10))
    pairs = pair_files({"main.py": "x", "helpers.py": body, "notes.txt": "hello\n"},
                       {"main.py": "y", "utils.py": body + "more = 1\n", "data.csv": "1,2\n"})  # fmt: skip
    assert ("helpers.py", "utils.py") in [(old, new) for old, new, _ in pairs]
    assert ("notes.txt", None, None) in pairs
    assert (None, "data.csv", None) in pairs
    assert ("main.py", "main.py", None) in pairs


def test_dissimilar_files_are_not_a_rename():
    assert similarity("a\nb\nc\n", "x\ny\nz\n") < 0.6
    pairs = pair_files({"a.py": "a\nb\nc\n"}, {"b.py": "x\ny\nz\n"})
    assert pairs == [("a.py", None, None), (None, "b.py", None)]


def test_each_file_is_renamed_at_most_once_to_its_best_match():
    body = "".join(f"v{i} = {i}\n" for i in range(10))
    pairs = pair_files({"old.py": body}, {"near.py": body + "x = 1\n", "far.py": body + "x\ny\nz\nw\n"})
    renames = [(old, new) for old, new, score in pairs if score is not None]
    assert renames == [("old.py", "near.py")]


def test_a_whole_diff_totals_its_files():
    diff = diff_files({"main.py": "a\nb\n", "gone.txt": "x\n"}, {"main.py": "a\nc\n", "new.txt": "p\nq\n"})
    assert {f.name: f.status for f in diff.files} == {
        "main.py": "modified",
        "gone.txt": "removed",
        "new.txt": "added",
    }
    assert (diff.added, diff.removed) == (3, 2)


def test_a_file_changed_only_in_whitespace_is_unchanged_when_whitespace_is_ignored():
    diff = diff_files({"m.py": "x = 1\n"}, {"m.py": "x  = 1\n"}, ignore_whitespace=True)
    assert [f.status for f in diff.files] == ["unchanged"]


# Choosing a and b ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (None, None, (3, 4, "")),
        ("", "", (3, 4, "")),
        (None, "2", (1, 2, "")),
        ("1", None, (1, 4, "")),
        ("4", "1", (4, 1, "")),
        (" 2 ", "3", (2, 3, "")),
        (
            None,
            "1",
            (None, None, "Iteration 1 is the first one: choose another iteration to compare it with."),
        ),
        ("3", "3", (None, None, "Choose two different iterations to compare.")),
        ("4", None, (None, None, "Choose two different iterations to compare.")),
        ("0", "1", (None, None, "This run has no iteration 0.")),
        ("1e3", "1", (None, None, "“a” must be an iteration number.")),
        ("1", "²", (None, None, "“b” must be an iteration number.")),
    ],
)
def test_it_chooses_the_pair_to_compare(a, b, expected):
    assert choose_pair([1, 2, 3, 4], a, b) == expected


def test_a_run_with_fewer_than_two_iterations_has_nothing_to_compare():
    assert choose_pair([1], None, None)[2].startswith("This run has fewer than two iterations")
    assert choose_pair([], "1", "2")[2].startswith("This run has fewer than two iterations")
