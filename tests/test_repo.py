"""The repository's promises about itself: CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [next(line for line in b.splitlines() if line.strip() and not line.startswith("#")) for b in blocks]


def test_ci_runs_exactly_the_readme_test_command():
    cmds = readme_commands()
    assert "flexnas search --problem fashion-mnist" in cmds[0]
    assert "pytest" in cmds[1]
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert cmds[1] in ci_lines


def test_readme_links_the_benchmark_report():
    assert "benchmarks/REPORT.md" in (ROOT / "README.md").read_text()
