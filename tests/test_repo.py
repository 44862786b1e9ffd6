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


# docs/DESIGN.md, "Layers": every import points down (or within a layer), and no module imports itself back
LAYERS = {
    "data": {"errors", "plan", "space"},
    "engine": {"partial", "engine", "sampler", "pipeline", "problem", "pretrained", "registry"},
    "metrics": {"features", "measures", "macs", "clip", "store", "objectives"},
    "search": {"operators", "config", "candidates", "runfolder", "search"},
    "outputs": {"report", "results", "cli"},
}


def flexnas_imports() -> dict[str, set[str]]:
    """Module (a package such as ``cli`` counts as one) -> the flexnas modules it imports anywhere
    (top level or inside functions)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "flexnas").rglob("*.py")):
        name = path.relative_to(ROOT / "flexnas").parts[0].removesuffix(".py")
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deps |= {n.split(".")[1] for n in names if n.startswith("flexnas.")} - {name}
    return graph


def test_imports_point_down_the_layers_without_circles():
    from graphlib import CycleError, TopologicalSorter

    graph = flexnas_imports()
    graph.pop("__init__")
    rank = {m: i for i, layer in enumerate(LAYERS.values()) for m in layer}
    assert set(graph) == set(rank), "every module belongs to one layer of docs/DESIGN.md"
    upward = [(m, d) for m, deps in graph.items() for d in deps if rank[d] > rank[m]]
    assert upward == []
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import circle: {e.args[1]}") from None


def test_library_never_imports_problems_or_benchmarks():
    for path in (ROOT / "flexnas").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (problems|benchmarks)\b", text, flags=re.M), path.name


def test_modules_fit_on_a_screen_or_two():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "flexnas").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}
