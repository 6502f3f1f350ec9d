"""The layout: the root holds the reading path and nothing else, and no module imports another that imports it
back, directly or through others (imports inside functions count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READING_PATH = {"model.py", "sample.py", "training.py", "sft.py", "rl.py", "opd.py", "study.py"}


def project_modules() -> dict:
    """module name -> file, for every Python file of the project outside tests/ (packages by their folders)."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in ("tests", ".venv") or any(part.startswith(".") for part in relative.parts):
            continue
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return modules


def imports_of(path: Path, modules: dict) -> set:
    """The project modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def test_the_root_holds_the_reading_path():
    assert {path.name for path in ROOT.glob("*.py")} == READING_PATH
    assert {path.name for path in ROOT.iterdir() if path.is_dir() and not path.name.startswith(".")} >= {
        "evals", "lab", "infrastructure", "tools", "tests", "docs", "data"}


def test_the_import_graph_has_no_circle():
    modules = project_modules()
    graph = {name: imports_of(path, modules) - {name} for name, path in modules.items()}
    assert graph["training"] >= {"model", "sample", "infrastructure.distributed"}  # the graph is read at all
    visiting, done = [], set()

    def visit(name):
        if name in visiting:
            raise AssertionError("import circle: " + " -> ".join(visiting[visiting.index(name):] + [name]))
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)
    for name in sorted(graph):
        visit(name)
