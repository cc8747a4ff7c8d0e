"""The repository stands on its own, and CI runs exactly what README.md tells people to run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


SKIPPED_DIRS = {".git", ".venv", "data", "__pycache__", ".mypy_cache", ".ruff_cache"}
SKIPPED_DIRS |= {".pytest_cache", ".hypothesis"}


def repository_text_files() -> list[Path]:
    files = []
    for path in REPO.rglob("*"):
        parts = set(path.relative_to(REPO).parts)
        if path.is_file() and not parts & SKIPPED_DIRS and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def test_nothing_points_outside_the_repository() -> None:
    outside = re.compile(r"\.\./" + "shared|/work/" + "shared")  # split: not a match itself
    offenders = [
        str(path.relative_to(REPO))
        for path in repository_text_files()
        if outside.search(path.read_text(errors="replace"))
    ]
    assert offenders == []


def readme_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n\s*(.+?)\n\s*```", section)


def test_the_two_commands_make_their_own_virtual_environment() -> None:
    run, test = readme_commands()
    for command in (run, test):
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install -r ")
    assert run.endswith(".venv/bin/python server.py")
    assert test.endswith(".venv/bin/python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = readme_commands()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test in ci


def test_the_virtual_environment_is_not_committed() -> None:
    """Ignored whether a directory or a symlink to one (a worktree's `.venv` may be a link:
    `.venv/` alone would not ignore it), and not in the repository."""
    assert ".venv" in (REPO / ".gitignore").read_text().splitlines()
    if (REPO / ".git").exists():
        tracked = subprocess.run(
            ["git", "ls-files", "--", ".venv"], cwd=REPO, capture_output=True, text=True
        )
        assert tracked.stdout == ""


def test_docs_named_in_the_readme_exist() -> None:
    readme = (REPO / "README.md").read_text()
    for name in set(re.findall(r"`((?:docs|contrib|bench|tools)/[\w./-]+)`", readme)):
        assert (REPO / name).exists(), name
