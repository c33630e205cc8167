"""The package's shape: layers that import only downwards, no import cycle, argparse only in the command layer,
and pipelines/ on d2sfm's library (never its command lines). Read from the source, so a lazy import inside a
function counts as much as one at the top."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first. A module may import its own sub-package and any lower layer; packages on one line are peers that
# do not import each other.
LAYERS = [
    ("errors",),
    ("bounds", "runtime", "io"),
    ("features", "synthetic"),
    ("matching", "training"),
    ("sfm",),
    ("refinement",),
    ("localization", "evaluation", "viz"),
    ("cluster",),
    ("config",),
    ("pipeline",),
    ("api",),
    ("commands",),
    ("shims",),  # d2sfm/extract.py ...: what python -m d2sfm.X runs
]
RANK = {package: rank for rank, group in enumerate(LAYERS) for package in group}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "api"  # d2sfm/__init__.py re-exports the API
    return parts[1] if parts[1] in RANK else "shims"


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in (REPO / "d2sfm").rglob("*.py")}
    return {name: {target for target in imports(path) if target in modules and target != name}
            for name, path in modules.items()}


def test_every_package_is_placed_in_a_layer():
    packages = {path.name for path in (REPO / "d2sfm").iterdir() if (path / "__init__.py").is_file()}
    assert packages <= set(RANK), f"place {sorted(packages - set(RANK))} in LAYERS"
    shims = {path.stem for path in (REPO / "d2sfm").glob("*.py")} - {"__init__", "errors", "bounds", "config", "api"}
    assert shims == {"extract", "match", "reconstruct", "localize", "evaluate", "export", "refine", "train", "view"}


def test_imports_go_down_the_layers():
    wrong = [f"{module} ({layer(module)}) imports {target} ({layer(target)})"
             for module, targets in package_graph().items() for target in targets
             if layer(module) != layer(target) and RANK[layer(target)] >= RANK[layer(module)]]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = package_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, cycles


# Not a command line: the original D2-Net's training checkpoints hold its argparse.Namespace, which the loader must
# allow to unpickle.
READS_ARGPARSE_OBJECTS = {"d2sfm.features.checkpoint"}


def test_argparse_lives_in_the_command_layer_only():
    files = list((REPO / "d2sfm").rglob("*.py")) + list((REPO / "pipelines").glob("*.py"))
    outside = [module_name(path) for path in files if "argparse" in imports(path)
               and layer(module_name(path)) != "commands" and module_name(path) not in READS_ARGPARSE_OBJECTS]
    assert not outside, outside


def test_pipelines_use_the_library_not_the_command_lines():
    wrong = [f"{path.name}: {target}" for path in (REPO / "pipelines").glob("*.py") for target in imports(path)
             if target.startswith("d2sfm.commands")]
    assert not wrong, wrong


def test_the_file_layer_needs_no_torch():
    """d2sfm.io reads and writes features without a network (see also test_packaging's run-time check)."""
    heavy = [f"{module_name(path)}: {target}" for path in (REPO / "d2sfm" / "io").glob("*.py")
             for target in imports(path) if target.split(".")[0] == "torch"]
    assert not heavy, heavy


def test_library_code_never_prints():
    """The library logs to logging.getLogger("d2sfm"); only the command layer writes to the console itself."""
    files = list((REPO / "d2sfm").rglob("*.py")) + list((REPO / "pipelines").glob("*.py"))
    printing = [f"{module_name(path)}:{node.lineno}" for path in files if layer(module_name(path)) != "commands"
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not printing, printing


def test_the_tests_mirror_the_package():
    """tests/<name>/ tests d2sfm/<name>/ (kornia's layout); hostile/ is the hostile-input suite across commands."""
    folders = {path.name for path in (REPO / "tests").iterdir() if (path / "__init__.py").is_file()}
    packages = {path.name for path in (REPO / "d2sfm").iterdir() if (path / "__init__.py").is_file()}
    assert folders - {"hostile"} <= packages, sorted(folders - {"hostile"} - packages)
