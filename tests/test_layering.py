"""The imports of every project module (read with ast, lazy imports inside functions included) run downward
through the layers below, with no circles. A module may import from its own layer only where no circle forms."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lowest first: data and flag parsing; the maths and run management; the optimizer; the trainer; what uses it
LAYERS = [
    {"data"},
    {"flags", "kernels", "constraints", "lipschitz", "masks", "lm_head", "costs", "run_control"},
    {"muon"},
    {"train_gpt"},
    {"tools", "bench"},
    {"records"},
]


def layer_of(module: str) -> int:
    top = module.split("/")[0].removesuffix(".py")
    (layer,) = [i for i, names in enumerate(LAYERS) if top in names]
    return layer


def project_modules() -> list[str]:
    """Paths (relative to the root) of every project .py file outside tests/ and the virtualenv."""
    out = []
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("tests", "__pycache__", "checkpoints",
                                                                           "logs")]
        out += [os.path.relpath(os.path.join(d, f), ROOT) for f in files if f.endswith(".py")]
    return sorted(out)


def resolve(name: str) -> str | None:
    """A dotted import name -> the project file it names (None for anything outside the project)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        path = os.path.join(*parts[:n])
        for candidate in (path + ".py", os.path.join(path, "__init__.py")):
            if os.path.isfile(os.path.join(ROOT, candidate)):
                return candidate
    return None


def imports_of(path: str) -> set[str]:
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    found = {resolve(n) for n in names} - {None, path}
    return {f for f in found if not f.endswith("__init__.py")}


def test_every_import_runs_downward():
    wrong = []
    for path in project_modules():
        for dep in imports_of(path):
            if layer_of(dep) > layer_of(path):
                wrong.append(f"{path} imports {dep} (a higher layer)")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    graph = {p: imports_of(p) for p in project_modules()}
    state: dict[str, int] = {}

    def visit(p, stack):
        state[p] = 1
        for q in graph.get(p, ()):
            if state.get(q) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(q):] + [q]))
            if q not in state:
                visit(q, stack + [q])
        state[p] = 2

    for p in graph:
        if p not in state:
            visit(p, [p])


def test_the_layering_test_can_fail(tmp_path):
    """Its reader sees a lazy import inside a function, which is how the old circle hid."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from tools import sample\n    import train_gpt\n")
    tree = ast.parse(src.read_text())
    seen = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    seen |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert seen == {"train_gpt", "tools"} and resolve("tools.sample") == "tools/sample.py"
