"""The architecture the tree shows, enforced: package layers, no import circles, README's layout in step.

Imports are read from the source (module level and inside functions; ``TYPE_CHECKING``
blocks are for type checkers only and are left out), so a lazy import that runs
against the layering fails here before it fails a reader. Layers are the device
runtime's (``edge_asd``); import circles are looked for in the whole tree, the
desktop's ``train`` and ``export`` included.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import edge_asd

ROOT = Path(edge_asd.__file__).resolve().parent.parent
PKG = ROOT / "edge_asd"
# The packages of the tree: the device runtime and the desktop side that writes what it loads.
TREE = ("edge_asd", "train", "export")

# Who may import whom, by subpackage of edge_asd ("" is the top-level modules: errors, progress).
# The data path reads downwards: cli -> daemon / offline -> runtime -> scoring -> io.
LAYERS: dict[str, set[str]] = {
    "": set(),
    "io": {""},
    "synth": {"", "io"},
    "scoring": {"", "io"},
    "mqtt": {""},
    "runtime": {"", "io", "scoring"},
    "daemon": {"", "io", "scoring", "runtime", "mqtt"},
    "offline": {"", "io", "scoring", "runtime"},
    "cli": {"", "io", "scoring", "runtime", "daemon", "offline", "mqtt", "synth"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def subpackage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    return parts[1] if (PKG / parts[1]).is_dir() else ""


def _runtime_imports(tree: ast.AST, here: str, is_package: bool, typing_too: bool = False,
                     roots: tuple[str, ...] = ("edge_asd",)) -> set[str]:
    """Modules of the packages ``roots`` this module imports when it runs (``if TYPE_CHECKING:``
    blocks left out, unless ``typing_too``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if not typing_too and isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here.split(".")[: len(here.split(".")) - child.level + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] in roots:
                    found.add(target)
                    for alias in child.names:  # "from edge_asd.io import audio" imports a module
                        if (ROOT / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                            found.add(target + "." + alias.name)
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] in roots)
            visit(child)

    visit(tree)
    return found


@functools.cache
def import_graph(typing_too: bool = False, roots: tuple[str, ...] = ("edge_asd",)) -> dict[str, set[str]]:
    graph = {}
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            name = module_name(path)
            graph[name] = _runtime_imports(ast.parse(path.read_text()), name, path.stem == "__init__", typing_too, roots)
    return graph


def test_every_import_respects_the_layers():
    graph = import_graph()
    assert len(graph) > 40, "the walk found the package's modules"
    wrong = []
    for module, deps in graph.items():
        here = subpackage(module)
        for dep in deps:
            there = subpackage(dep)
            if there != here and there not in LAYERS[here] and dep != "edge_asd":
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports against the layers (LAYERS in this file): " + ", ".join(sorted(wrong))


def _circles(full: dict[str, set[str]]) -> list[list[str]]:
    graph = {m: {d for d in deps if d in full} - {m} for m, deps in full.items()}
    # a top-level package's __init__.py is its every module's parent, not a dependency anyone chose
    graph = {m: d - set(TREE) for m, d in graph.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                circles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                walk(dep, path + [dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m, [m])
    return circles


def test_the_walk_reads_the_whole_tree():
    graph = import_graph(roots=TREE)
    assert {"train.cli", "train.grid", "export.pack", "edge_asd.runtime.scorer"} <= set(graph)
    assert "train.grid" in graph["train.cli"], "lazy imports inside functions are read too"


def test_no_import_circles():
    circles = _circles(import_graph(roots=TREE))
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_import_circles_even_for_type_checkers():
    """A circle hidden under ``TYPE_CHECKING`` still means neither module can be read, or changed, alone."""
    circles = _circles(import_graph(typing_too=True, roots=TREE))
    assert not circles, "import circles (TYPE_CHECKING imports counted): " + "; ".join(" -> ".join(c) for c in circles)


def test_offline_never_imports_the_daemon():
    """``edge-asd score`` judges clips with the decision the daemon uses (scoring/decision.py), not the daemon's."""
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() if subpackage(m) == "offline"
           for d in deps if subpackage(d) == "daemon"]
    assert not bad, ", ".join(sorted(bad))


def test_runtime_package_never_imports_the_desktop_side():
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps if d.split(".")[0] in ("train", "export")]
    assert not bad


def test_readme_layout_names_every_subpackage():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    subpackages = sorted(p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert set(LAYERS) - {""} == set(subpackages), "LAYERS lists every subpackage"
    missing = [s for s in subpackages if not re.search(rf"\b{s}/", layout)]
    assert not missing, f"README's layout section does not show {missing}"


def test_every_import_names_something_that_exists():
    """Imports inside functions run only when their command does: a stale one would wait for a user to find it."""
    import importlib

    stale = []
    for path in sorted(PKG.rglob("*.py")) + sorted((ROOT / "train").rglob("*.py")) + sorted((ROOT / "export").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("edge_asd"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            stale.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module}.{alias.name}")
    assert not stale, "imports of names that do not exist: " + ", ".join(stale)


def test_the_run_folders_file_names_live_in_rundir_only():
    """train.rundir.RunDir owns the run folder's layout: a file name spelled elsewhere would drift from it."""
    from train.rundir import RunDir

    run = RunDir(Path("RUN"))
    paths = [run.config, run.split, run.gate, run.losses, run.validation, run.extractor, run.normal_embeddings,
             run.default_approach_file, run.stage2_json("x"), run.detectors("x"), run.oof("x"), run.ae,
             run.test_embeddings]
    names = {p.name for p in paths} | {"stage2", "baseline", "checkpoints"}
    spelled = []
    for path in sorted((ROOT / "train").rglob("*.py")) + sorted((ROOT / "export").rglob("*.py")):
        if path.name == "rundir.py":
            continue
        tree = ast.parse(path.read_text())
        # ``prefix + "detectors.npz"`` names a member's file inside a bundle, the manifest's business
        bundle_names = {id(n.right) for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in names and id(node) not in bundle_names:
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not spelled, "run-folder file names outside train/rundir.py: " + ", ".join(spelled)
