"""The package's layout rules, read off the source with `ast`: no import cycle among rwkv_np's modules,
no module importing another module's private names, and `import rwkv_np` needing NumPy only.

Every `import` / `from ... import` of an rwkv_np module counts, wherever it is in a module (inside
functions too), except under `if __name__ == "__main__":` (a script's own block runs after the module
is loaded). The checker is first run on a small package made here with a cycle and a private import,
so that a checker finding nothing cannot pass for a layout with nothing to find.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_main_guard(node: ast.AST) -> bool:
    """`if __name__ == "__main__":` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    consts = {s.value for s in sides if isinstance(s, ast.Constant)}
    return isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and consts == {"__main__"}


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside `if __name__ == "__main__":` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if _is_main_guard(child):
                stack.extend(child.orelse)  # the guard's body is a script's; its else branch is not
            else:
                stack.append(child)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def import_graph(root: Path):
    """(edges {module: {modules it imports}}, private [(module, from module, name)]) of the package at root."""
    package = root.name
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    edges = {m: set() for m in modules}
    private = []
    for m, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        target = alias.name
                        while target not in modules:  # `import rwkv_np.x.y` of a name that is not a module
                            target = target.rpartition(".")[0]
                        edges[m].add(target)
                        if any(_private(part) for part in alias.name.split(".")):
                            private.append((m, alias.name, alias.name.rpartition(".")[2]))
                continue
            if node.level:
                base = m.split(".") if is_package else m.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == package or target.startswith(package + ".")):
                continue
            if any(_private(part) for part in target.split(".")):
                private.append((m, target, target.rpartition(".")[2]))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    edges[m].add(sub)
                else:
                    edges[m].add(target)
                if _private(alias.name) and target != m:
                    private.append((m, target, alias.name))
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first search meets (each as the modules along it, the first repeated last)."""
    state, found = {}, []

    def visit(u, path):
        state[u] = 1
        path.append(u)
        for v in sorted(edges.get(u, ())):
            if v == u:
                continue  # a package's __init__ naming its own names
            if state.get(v) == 1:
                found.append(path[path.index(v):] + [v])
            elif v in edges and not state.get(v):
                visit(v, path)
        path.pop()
        state[u] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(edges):
        if not state.get(m):
            visit(m, [])
    return found


def test_the_checker_finds_a_cycle_and_a_private_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from .sub.c import h\n    return h\n")  # inside a function: counted
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nfrom ..a import _hidden\nh = 1\n")
    (pkg / "d.py").write_text("x = 1\nif __name__ == '__main__':\n    from .a import _hidden\n    import pkg.d\n")
    (pkg / "e.py").write_text("from pkg.sub import c as _c\nfrom ._private_module import y\n")
    edges, private = import_graph(pkg)
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.sub.c"} and edges["pkg.sub.c"] == {"pkg.a"}
    assert edges["pkg.d"] == set()  # the __main__ block does not count
    assert cycles(edges) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    assert sorted(private) == [("pkg.e", "pkg._private_module", "_private_module"), ("pkg.sub.c", "pkg.a", "_hidden")]


@pytest.fixture(scope="module")
def graph():
    return import_graph(REPO / "rwkv_np")


def test_no_import_cycle_among_the_modules(graph):
    edges, _ = graph
    assert len(edges) > 50 and edges["rwkv_np.model"] >= {"rwkv_np.registry", "rwkv_np.state"}
    assert "rwkv_np.rwkv4.params" not in edges["rwkv_np.rwkv4.reference"]  # only in its __main__ block
    assert cycles(edges) == []


def test_no_module_imports_a_private_name_of_another(graph):
    _, private = graph
    assert private == []


def test_importing_rwkv_np_needs_numpy_only():
    code = ("import sys, rwkv_np, rwkv_np.loading, rwkv_np.registry; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numba', 'llvmlite', 'scipy', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
