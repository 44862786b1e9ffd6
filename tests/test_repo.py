"""The repository's promises about itself: CI runs the README's test command."""

from __future__ import annotations

import ast
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


# docs/DESIGN.md, "Layers": one folder per layer, every import points down (or within a layer), no circles
LAYERS = ("base", "plan", "engine", "models", "metrics", "search", "report", "cli")  # base: flexnas/*.py


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Modules imported anywhere in ``tree`` (top level or inside functions), except under
    ``if TYPE_CHECKING:``: annotations are not a runtime dependency."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def flexnas_imports() -> dict[str, set[str]]:
    """``layer.module`` (``base.errors`` for top-level modules; the ``cli`` package counts as one) -> the flexnas
    modules it imports."""
    modules = {".".join(p.relative_to(ROOT / "flexnas").with_suffix("").parts)
               for p in (ROOT / "flexnas").rglob("*.py")}

    def name(dotted: str) -> str | None:
        parts = dotted.split(".")[1:]
        if parts and parts[0] == "cli":
            return "cli"
        if parts and parts[0] in modules:
            return f"base.{parts[0]}"
        return next((m for m in (".".join(parts[:2]),) if m in modules and not m.endswith("__init__")), None)

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "flexnas").rglob("*.py")):
        parts = path.relative_to(ROOT / "flexnas").with_suffix("").parts
        if parts == ("__init__",) or (len(parts) == 2 and parts[1] == "__init__" and parts[0] != "cli"):
            continue  # the top-level lazy exports and the layers' docstrings
        me = "cli" if parts[0] == "cli" else f"base.{parts[0]}" if len(parts) == 1 else ".".join(parts)
        deps = graph.setdefault(me, set())
        deps |= {d for n in _runtime_imports(ast.parse(path.read_text())) if n.startswith("flexnas.")
                 and (d := name(n)) is not None} - {me}
    return graph


def test_imports_point_down_the_layers_without_circles():
    from graphlib import CycleError, TopologicalSorter

    graph = flexnas_imports()
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    assert {m.split(".")[0] for m in graph} == set(LAYERS), "every folder is a layer of docs/DESIGN.md"
    upward = [(m, d) for m, deps in graph.items() for d in deps if rank[d.split(".")[0]] > rank[m.split(".")[0]]]
    assert upward == []
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import circle: {e.args[1]}") from None


def test_each_layer_says_what_lives_there_and_what_it_may_import():
    for layer in LAYERS[1:]:
        doc = ast.get_docstring(ast.parse((ROOT / "flexnas" / layer / "__init__.py").read_text())) or ""
        assert "May import" in doc, layer


def test_library_never_imports_problems_or_benchmarks():
    for path in (ROOT / "flexnas").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (problems|benchmarks)\b", text, flags=re.M), path.name


def test_modules_fit_on_a_screen_or_two():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "flexnas").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 250}
    assert long == {}
