"""The README's tour runs as written, and its two commands are the ones CI runs."""
import pathlib
import re

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def test_tour_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    ci = (pathlib.Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -q' in README
    assert "grep -m1 '^pip install -e \".\\[test\\]\"' README.md" in ci
    assert README.index("pip install -e . && python -m nnjit info") < README.index("[test]")
