"""The course apparatus: lesson headers, one worked answer per exercise, the student version, the landing page.

The answers themselves run in tests/test_notebooks.py, which executes every notebook in smoke mode.
"""

import re

import nbformat
import pytest

from coda import course, workbook

NOTEBOOKS = workbook.find_notebooks()
PAPERS = ("2104.00032", "2109.13004")  # CVPR 2021 and its TPAMI extension
README = workbook.PROJECT_ROOT / "notebooks" / "README.md"


def _read(path):
    return nbformat.read(path, as_version=4)


def _exercises(nb) -> list[int]:
    """The numbers of the items of the "## Exercises" list (the last markdown cell before the answers)."""
    text = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## Exercises" in c.source)
    return [int(n) for n in re.findall(r"^(\d+)\. ", text.split("## Exercises", 1)[1], flags=re.M)]


def _answers(nb) -> list[tuple[int, int]]:
    """(answer number, cell index) of the "**Answer N.**" cells."""
    return [(int(m.group(1)), i) for i, c in enumerate(nb.cells)
            if c.cell_type == "markdown" and (m := re.match(r"\*\*Answer (\d+)\.\*\*", c.source))]


def _notebook(path, *cells):
    """Write a notebook of (cell type, source) pairs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    new = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell}
    nb.cells = [new[kind](source) for kind, source in cells]
    nbformat.write(nb, path)
    return path


def _outside_solutions(cell) -> list[str]:
    """The lines of a cell that are not in a solution block."""
    lines = cell.source.splitlines()
    inside = {k for a, b in course.solution_blocks(cell.source, cell.cell_type) for k in range(a, b + 1)}
    return [line for k, line in enumerate(lines) if k not in inside]


# ----- the committed notebooks ---------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_lesson_has_prerequisites_goals_and_the_papers(path):
    nb = _read(path)
    head = "\n".join(c.source for c in nb.cells[:2] if c.cell_type == "markdown")
    for section in ("### Prerequisites", "### Learning goals", "### Papers cited"):
        assert section in head, f"{path.name}: no {section!r} in the first two cells"
    goals = head.split("### Learning goals", 1)[1].split("###", 1)[0]
    assert "After this lesson you can" in goals
    assert 3 <= len(re.findall(r"^\* ", goals, flags=re.M)) <= 5, f"{path.name}: 3-5 learning goals"
    cited = head.split("### Papers cited", 1)[1]
    for number in PAPERS:
        assert f"arXiv:{number}" in cited and f"https://arxiv.org/abs/{number}" in cited, number
    earlier = [p.name[:2] for p in NOTEBOOKS if p.name < path.name]
    prerequisites = head.split("### Prerequisites", 1)[1].split("###", 1)[0]
    assert not earlier or any(n in prerequisites for n in earlier), f"{path.name}: which earlier lessons?"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_exercise_has_a_worked_answer_after_the_exercises(path):
    nb = _read(path)
    exercises, answers = _exercises(nb), _answers(nb)
    assert exercises == list(range(1, len(exercises) + 1)) and len(exercises) >= 3, exercises
    assert [n for n, _ in answers] == exercises, f"{path.name}: answers {[n for n, _ in answers]}"
    listed = max(i for i, c in enumerate(nb.cells) if "## Exercises" in c.source)
    assert all(i > listed for _, i in answers), "the answers come after the exercises"
    for k, (n, i) in enumerate(answers):
        assert course.solution_blocks(nb.cells[i].source, "markdown"), f"answer {n}: reasoning without markers"
        end = answers[k + 1][1] if k + 1 < len(answers) else len(nb.cells)
        for cell in nb.cells[i + 1 : end]:  # the answer's code cells: all of their code is the solution
            assert cell.cell_type == "code", f"{path.name}, answer {n}: one markdown cell, then code"
            lines = cell.source.splitlines()
            assert lines[0] == course.MARKERS["code"][0] and lines[-1] == course.MARKERS["code"][1]
            assert len(lines) <= 24, f"{path.name}, answer {n}: a short code cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markers_are_balanced_and_only_in_the_answers(path):
    nb = _read(path)
    first_answer = min(i for _, i in _answers(nb))
    for i, cell in enumerate(nb.cells):
        blocks = course.solution_blocks(cell.source, cell.cell_type, f"{path.name}, cell {i}")  # raises if unbalanced
        assert not blocks or i >= first_answer, f"{path.name}, cell {i}: a solution inside the lesson"


def test_the_workbook_has_about_two_dozen_exercises():
    assert sum(len(_exercises(_read(p))) for p in NOTEBOOKS) >= 20


# ----- the student version -------------------------------------------------------------------


def test_strip_solutions_replaces_the_blocks_as_nbgrader_does():
    code = ("x = 1\n### BEGIN SOLUTION\ny = 2\n### END SOLUTION\n"
            "if x:\n    ### BEGIN SOLUTION\n    z = 3\n    ### END SOLUTION\n")
    assert course.strip_solutions(code, "code") == (
        "x = 1\n# YOUR CODE HERE\nraise NotImplementedError()\nif x:\n"
        "    # YOUR CODE HERE\n    raise NotImplementedError()\n")
    text = "**Answer 1.**\n\n<!-- BEGIN SOLUTION -->\nBecause.\n\nReally.\n<!-- END SOLUTION -->"
    assert course.strip_solutions(text, "markdown") == "**Answer 1.**\n\n_Your answer here._"
    assert course.strip_solutions("no markers", "markdown") == "no markers"
    assert course.strip_solutions("### BEGIN SOLUTION", "raw") == "### BEGIN SOLUTION"  # raw cells are kept


@pytest.mark.parametrize("source, kind, message", [
    ("### BEGIN SOLUTION\nx = 1", "code", "has no"),
    ("x = 1\n### END SOLUTION", "code", "without"),
    ("### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION", "code", "inside the block"),
    ("<!-- BEGIN SOLUTION -->\ntext", "markdown", "has no"),
    ("### BEGIN SOLUTION\ntext\n### END SOLUTION", "markdown", "for code cells"),
    ("<!-- BEGIN SOLUTION -->\nx = 1\n<!-- END SOLUTION -->", "code", "for markdown cells"),
])
def test_unbalanced_or_wrong_markers_raise(source, kind, message):
    with pytest.raises(ValueError, match=message):
        course.solution_blocks(source, kind, "nb.ipynb, cell 3")


def test_student_version_of_the_workbook_strips_every_solution_and_keeps_the_rest(tmp_path):
    written = course.write_student_version(tmp_path / "student")
    assert [p.name for p in written] == [p.name for p in NOTEBOOKS]
    for path, out in zip(NOTEBOOKS, written, strict=True):
        nb, student = _read(path), _read(out)
        nbformat.validate(student)
        assert student.metadata == nb.metadata and len(student.cells) == len(nb.cells)
        text = "\n".join(c.source for c in student.cells)
        outside = "\n".join(line for c in nb.cells for line in _outside_solutions(c))  # the teacher's, less the answers
        for marker in (*course.MARKERS["code"], *course.MARKERS["markdown"]):
            assert marker not in text, f"{out.name}: {marker!r} left"
        stubs = 0
        for cell, kept in zip(nb.cells, student.cells, strict=True):
            assert (kept.cell_type, kept.get("id"), kept.metadata) == (cell.cell_type, cell.get("id"), cell.metadata)
            blocks = course.solution_blocks(cell.source, cell.cell_type)
            if not blocks:
                assert kept.source == cell.source, f"{out.name}: a cell without a solution changed"
                continue
            stubs += 1
            lines = cell.source.splitlines()
            solution = [lines[k].strip() for a, b in blocks for k in range(a + 1, b)]
            left = [s for s in solution if len(s) > 8 and text.count(s) > outside.count(s)]
            assert not left, f"{out.name}: answer text left: {left}"
            expected = course.MARKDOWN_STUB if cell.cell_type == "markdown" else "raise NotImplementedError()"
            assert expected in kept.source
        assert stubs == sum(1 for c in nb.cells if course.solution_blocks(c.source, c.cell_type)) > 0
        assert "**Answer 1.**" in text and "## Exercises" in text  # the questions and the answer slots stay


def test_student_version_clears_outputs_and_takes_only(tmp_path):
    source = tmp_path / "lessons"
    source.mkdir()
    path = _notebook(source / "01_a.ipynb", ("markdown", "# 01 a"),
                     ("code", "### BEGIN SOLUTION\nprint(1)\n### END SOLUTION"))
    nb = _read(path)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    nb.cells[1].execution_count = 3
    nbformat.write(nb, path)
    _notebook(source / "02_b.ipynb", ("markdown", "# 02 b"))
    (out,) = course.write_student_version(tmp_path / "out", source, only=["01"])
    cell = _read(out).cells[1]
    assert cell.outputs == [] and cell.execution_count is None
    assert cell.source == "# YOUR CODE HERE\nraise NotImplementedError()"
    assert not (tmp_path / "out" / "02_b.ipynb").exists()


def test_student_version_rejects_bad_input_naming_the_file_and_cell(tmp_path):
    with pytest.raises(ValueError, match="no notebook folder"):
        course.write_student_version(tmp_path / "out", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no numbered notebooks"):
        course.write_student_version(tmp_path / "out", tmp_path / "empty")
    source = tmp_path / "lessons"
    source.mkdir()
    _notebook(source / "01_ok.ipynb", ("markdown", "# 01 ok"))
    _notebook(source / "02_bad.ipynb", ("markdown", "# 02 bad"), ("code", "x = 1"),
              ("code", "### BEGIN SOLUTION\ny = 2"))
    with pytest.raises(ValueError, match=r"02_bad\.ipynb, cell 2: '### BEGIN SOLUTION' on line 1 has no"):
        course.write_student_version(tmp_path / "out", source)
    assert not (tmp_path / "out").exists(), "nothing is written when a notebook is bad"
    with pytest.raises(ValueError, match="another folder"):
        course.write_student_version(source, source)


def test_student_command_through_the_workbook_cli(tmp_path, capsys):
    source = tmp_path / "lessons"
    source.mkdir()
    _notebook(source / "01_a.ipynb",
              ("markdown", "# 01 a\n\n<!-- BEGIN SOLUTION -->\nsecret\n<!-- END SOLUTION -->"))
    assert workbook.main(["student", str(tmp_path / "out"), "--notebooks", str(source)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _read(tmp_path / "out" / "01_a.ipynb").cells[0].source == "# 01 a\n\n_Your answer here._"
    with pytest.raises(SystemExit) as exit_:
        workbook.main(["student", str(tmp_path / "out"), "--notebooks", str(tmp_path / "missing")])
    assert exit_.value.code == 2 and "no notebook folder" in capsys.readouterr().err


# ----- the landing page ----------------------------------------------------------------------


def test_notebooks_readme_lists_every_lesson_the_commands_and_the_papers():
    text = README.read_text()
    positions = [text.find(p.name) for p in NOTEBOOKS]
    assert all(k >= 0 for k in positions), "every notebook is listed"
    assert positions == sorted(positions), "in order"
    for needed in ("coda workbook", "coda workbook student", "--only", *PAPERS, "Prerequisites"):
        assert needed in text, needed
    assert "/work" not in text and "/tmp" not in text


def test_project_readme_points_at_the_landing_page_and_the_student_command():
    text = (workbook.PROJECT_ROOT / "README.md").read_text()
    assert "notebooks/README.md" in text and "coda workbook student" in text
