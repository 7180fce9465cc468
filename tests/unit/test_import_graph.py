"""The layout's rules, checked on the import graph of the project's own modules (every import
statement counts, also those inside functions, which is how heavy drivers are imported lazily):

- no import cycles among the modules of `loader` and `state`;
- `state` depends on nothing in `loader` (the state store sits below the loader);
- nothing imports the command line (`loader.cli` parses, calls one function, prints);
- the demo landing zone is used by the command line only;
- the layers (`LAYERS`, bottom first) import only their own and lower ones: a module that needs a
  higher layer's code is in the wrong place, or that code is.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("loader", "state")


def module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (for `from a.b import c`: a.b.c when it is a module, else a.b)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {target for target in found if target in modules and target != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


#: The layers, bottom first: each folder of `loader` (or module at its top) and the state store. A
#: module imports only modules of its own layer or of lower ones.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("state", "loader.redaction", "loader.memory", "loader.net"),
    ("loader.errors",),
    ("loader.config_parts",),
    # A sink's config block sits in its folder (loader/sinks/<name>/config.py) but below the config,
    # which builds `sinks` from the registry: both are of this layer (`SINK_CONFIG`).
    ("loader.kinds", "loader.config", "loader.failpoints", "loader.scratch", "loader.sinks.registry"),
    ("loader.retry", "loader.storage"),
    ("loader.observe",),  # logs, progress, metrics, the run history: what the protocol reports as it runs
    ("loader.landing",),  # the landing zone's files, footers, plans and reads
    ("loader.transform",),
    ("loader.sinks",),
    ("loader.execute",),
    ("loader.protocol",),
    ("loader.audit", "loader.demo"),  # verify, reports, doctor: they read what runs wrote
    ("loader.cli",),
)


#: A sink folder's config module (of the config's layer, whatever the folder).
SINK_CONFIG = re.compile(r"^loader\.sinks\.[a-z_]+\.config$")


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the longest layer name that is `module` or a package above it."""
    if SINK_CONFIG.match(module):
        module = "loader.config"
    found = [(len(name), rank) for rank, names in enumerate(LAYERS) for name in names
             if module == name or module.startswith(name + ".")]
    assert found, f"{module} is in no layer: add it to LAYERS"
    return max(found)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets
                  if layer_of(target) > layer_of(name))


def test_every_module_is_in_a_layer_and_imports_only_lower_or_its_own() -> None:
    graph = import_graph()
    assert all(layer_of(name) >= 0 for name in graph if name != "loader")  # the package's own __init__: empty
    assert upward_imports(graph) == []


def test_an_import_into_a_higher_layer_is_found() -> None:
    graph = {"loader.landing.sources": {"loader.protocol.planning"},
             "loader.protocol.planning": {"loader.landing"}}
    assert upward_imports(graph) == ["loader.landing.sources -> loader.protocol.planning"]


def test_the_graph_is_read_from_the_whole_tree() -> None:
    graph = import_graph()
    assert {"loader.cli", "loader.protocol.steps", "loader.sinks.delta.sink", "state.store"} <= set(graph)
    assert {"state", "loader.errors"} <= graph["loader.protocol.steps"]  # real edges are seen


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_state_depends_on_nothing_in_loader() -> None:
    graph = import_graph()
    upward = {name: sorted(t for t in targets if t.startswith("loader"))
              for name, targets in graph.items() if name.startswith("state")}
    assert {name: targets for name, targets in upward.items() if targets} == {}


def test_only_the_command_line_uses_the_demo_and_nothing_imports_it() -> None:
    graph = import_graph()
    importers = {name for name, targets in graph.items() if "loader.cli" in targets}
    assert importers == set()
    demo_users = {name for name, targets in graph.items()
                  if not name.startswith("loader.demo") and any(t.startswith("loader.demo") for t in targets)}
    assert demo_users <= {"loader.cli"}, demo_users


def test_the_state_packages_lazy_names_all_resolve() -> None:
    """state/__init__ lists its names twice (`__all__` for readers and linters, `_HOME` for the lazy
    import): both lists hold the same names and each resolves to the object of its module."""
    import importlib

    import state

    assert sorted(state.__all__) == sorted(state._HOME)
    for name, module in state._HOME.items():
        assert getattr(state, name) is getattr(importlib.import_module(module), name)


def test_the_landing_layer_takes_the_parts_of_the_config_it_uses() -> None:
    """loader/landing/ gets paths, retry policies and limits, never the whole `LoaderConfig`: what it
    depends on shows in its signatures, and a test builds it without a config file."""
    found = []
    for path in sorted((ROOT / "loader" / "landing").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "loader.config":
                found += [f"{path.name}: {a.name}" for a in node.names if a.name == "LoaderConfig"]
    assert found == []


#: Who may open Parquet files: the landing layer reads the zone, the sinks read back what they wrote,
#: the demo writes the zone it generates. Anything else reads the landing zone through `landing/`.
PARQUET_READERS = ("loader.landing", "loader.sinks", "loader.demo")


def parquet_users(modules: dict[str, Path]) -> list[str]:
    """Modules outside `PARQUET_READERS` that import pyarrow's Parquet or dataset readers."""
    found = []
    for name, path in sorted(modules.items()):
        if any(name == owner or name.startswith(owner + ".") for owner in PARQUET_READERS):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            names += [f"{node.module}.{a.name}" for a in getattr(node, "names", [])
                      if isinstance(node, ast.ImportFrom) and node.module == "pyarrow"]
            found += [f"{name}: {n}" for n in names if n in ("pyarrow.parquet", "pyarrow.dataset")]
    return found


def test_only_the_landing_layer_reads_the_landing_zone() -> None:
    """One reader of landing files (`landing/`) for runs, dimension loads, verify and the Ray
    executor: an error in a file is told one way, and strings are made plain one way."""
    assert parquet_users(module_files()) == []


def test_a_parquet_reader_outside_the_landing_layer_is_found(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("import pyarrow.parquet as pq\n")
    (tmp_path / "b.py").write_text("from pyarrow import dataset\n")
    (tmp_path / "c.py").write_text("import pyarrow.parquet\n")
    modules = {"loader.audit.a": tmp_path / "a.py", "loader.execute.b": tmp_path / "b.py",
               "loader.sinks.c": tmp_path / "c.py"}
    assert parquet_users(modules) == ["loader.audit.a: pyarrow.parquet", "loader.execute.b: pyarrow.dataset"]
