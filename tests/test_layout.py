"""The package's shape: import layers (no cycle, no lower module importing a higher one) and
one mirrored test file per source module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "expertsteer"
TESTS = ROOT / "tests"

# Lowest first: a module may import its own layer or below, never above. The order is the
# method's data flow (README, "How the code is laid out").
LAYERS: list[tuple[str, ...]] = [
    ("expertsteer", "types", "registry", "deps", "io", "tokens", "provenance"),  # root
    ("catalog", "layers"),
    ("models",),
    ("extract", "data"),
    ("align", "mi", "pairing", "estimators"),
    ("plan",),
    ("steer",),
    ("tune", "gate", "condition", "learned", "artifacts", "pipeline", "export", "export_lmeval"),
    ("serve", "eval", "vllm_backend"),
    ("cli",),
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path) -> set[str]:
    return imports_in(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> set[str]:
    """Every expertsteer module ``name`` imports, at any depth in the file (lazy ones too)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    known = modules()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "expertsteer"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "expertsteer":
                continue
            for alias in node.names:  # `from .pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return found - {name}


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    if top not in LAYER:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py: add it to LAYERS")
    return LAYER[top]


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_module_imports_a_higher_layer():
    offences = []
    for name, path in modules().items():
        for dep in imports_of(name, path):
            if dep == "expertsteer" and name != "expertsteer":
                continue  # `from . import __version__`: the root imports nothing eagerly
            if layer_of(dep) > layer_of(name):
                offences.append(f"{name} (layer {layer_of(name)}) imports {dep} ({layer_of(dep)})")
    assert not offences, "\n".join(offences)


def test_no_import_cycle():
    graph = {name: imports_of(name, path) for name, path in modules().items()}
    # a package's __init__ re-exporting its own modules is not a cycle back into them
    graph = {
        n: {d for d in deps if d in graph and not (n.startswith(d + ".") and d != "expertsteer")}
        for n, deps in graph.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep == "expertsteer":
                continue
            if state.get(dep) == 1:
                cycle = trail[trail.index(dep) :] if dep in trail else [dep]
                pytest.fail("import cycle: " + " -> ".join([*cycle, dep]))
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def mirrored_test(path: Path) -> Path:
    rel = path.relative_to(SRC)
    return TESTS.joinpath(*rel.parts[:-1], f"test_{rel.stem}.py")


def test_every_source_module_has_its_mirrored_test_file():
    missing = [
        f"{p.relative_to(ROOT)} -> {mirrored_test(p).relative_to(ROOT)}"
        for p in sorted(SRC.rglob("*.py"))
        if p.name != "__init__.py" and not mirrored_test(p).is_file()
    ]
    assert not missing, "modules without a test file:\n" + "\n".join(missing)


def defined_names(path: Path) -> set[str]:
    """Top-level functions, classes and assignments of a module."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def uses_module(test: Path, mod: str, src: Path) -> bool:
    """The test imports ``mod``, or a name ``mod`` defines through its package's re-export."""
    package, defined = mod.rpartition(".")[0], defined_names(src)
    for node in ast.walk(ast.parse(test.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            if any(a.name == mod or a.name.startswith(mod + ".") for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == mod or node.module.startswith(mod + "."):
                return True
            if any(f"{node.module}.{a.name}" == mod for a in node.names):
                return True
            if node.module == package and any(a.name in defined for a in node.names):
                return True
    return False


def test_mirrored_test_files_test_their_module():
    """A mirrored file is no placeholder: it uses its module and defines tests."""
    empty = []
    for p in sorted(SRC.rglob("*.py")):
        test = mirrored_test(p)
        if p.name == "__init__.py" or not test.is_file():
            continue
        tree = ast.parse(test.read_text(encoding="utf-8"))
        tests = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")
        ]
        if not tests or not uses_module(test, module_name(p), p):
            empty.append(f"{test.relative_to(ROOT)} (tests: {len(tests)}; uses {module_name(p)}?)")
    assert not empty, "\n".join(empty)


def test_the_checker_resolves_relative_and_lazy_imports():
    """The checker itself: a planted upward import (relative, inside a function) is found."""
    source = "from .io import write_json\n\ndef f():\n    from .cli import app\n"
    deps = imports_in(source, "expertsteer.models", is_package=False)
    assert deps == {"expertsteer.io", "expertsteer.cli"}
    assert [d for d in sorted(deps) if layer_of(d) > layer_of("expertsteer.models")] == [
        "expertsteer.cli"
    ]
    assert imports_in("from . import __version__\n", "expertsteer.plan", False) == {"expertsteer"}
