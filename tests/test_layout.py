"""The house rules a newcomer relies on: options described once, short functions, rules
stated where they apply (not as references to a document the repository lacks), no import
circles, IPython met only in the magics, and a worker side that loads nothing heavy."""

import ast
import pathlib
import subprocess
import sys

from parmagic.options import options_table

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "parmagic"
LONGEST_FUNCTION = 60  # lines: more is a sign of steps without names


def test_the_readme_options_table_is_made_from_the_options_module():
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- options-table:begin -->\n", "<!-- options-table:end -->"
    assert begin in readme and end in readme, "the README lost its options-table markers"
    table = readme.split(begin)[1].split(end)[0]
    assert table == options_table(), "run: python tools/options_table.py"


def test_no_function_of_the_package_is_longer_than_the_limit():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long, long


def test_the_package_states_its_rules_instead_of_citing_a_specification():
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "§" in line
    ]
    assert not citing, citing


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package, and the package's modules it imports: at its top, inside
    its functions, or for type checkers only (a circle of annotations is still a circle a
    reader walks)."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    found: dict[str, set[str]] = {}
    for name, path in paths.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found[name] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base[: len(base) if node.level else 0], node.module or ""])
                module = module.rstrip(".")
                named = [f"{module}.{alias.name}" for alias in node.names]
                targets = [t if t in paths else module for t in named]  # a module, or a name in one
            found[name] |= {target for target in targets if target in paths}
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, round (Tarjan's components)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for imported in graph[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            group = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(group) > 1:
                circles.append(sorted(group))

    for module in graph:
        if module not in order:
            visit(module)
    return circles


def test_no_module_of_the_package_imports_itself_round_a_circle():
    assert not _circles(_imports())


# The folders' order: each imports only from those before it (and from the modules at the
# top: errors, machine, options), never from those after it; magics.py at the top reads all
LAYERS = {"worker": 0, "backends": 1, "analysis": 2, "run": 3, "summary": 3}


def test_each_folder_imports_only_from_the_folders_before_it():
    """worker/ (where items run, worker processes included) imports nothing of the other
    folders; backends/ only worker/; analysis/ (the cell read) no run/ or summary/."""
    crossing = []
    for module, imported in _imports().items():
        here = module.split(".")[1] if module.count(".") >= 1 else None
        for target in imported:
            there = target.split(".")[1] if target.count(".") >= 1 else None
            if here in LAYERS and (
                LAYERS.get(there, -1) > LAYERS[here] or there in ("magics", "info")
            ):
                crossing.append(f"{module} -> {target}")
    assert not crossing, crossing


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_only_the_magics_import_ipython():
    importing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(name.split(".")[0] == "IPython" for name in names):
                importing.append(str(path.relative_to(ROOT)))
    assert set(importing) == {"parmagic/magics.py"}, importing


HEAVY = ("IPython", "ipykernel", "psutil", "tqdm", "matplotlib", "dask", "distributed")


def test_the_worker_side_loads_nothing_heavy():
    """What a fresh worker interpreter (spawn, forkserver) imports to serve."""
    probe = "import sys, parmagic.worker.process; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.check_output([sys.executable, "-c", probe], text=True).split()
    assert "parmagic.worker.process" in loaded
    assert not {name.split(".")[0] for name in loaded} & set(HEAVY)
