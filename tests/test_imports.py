"""No import cycle among the project's own files: every .py file is parsed (not imported), each import that
names a project module (a top-level .py file, a package, a module of a package, or a file beside the
importer, as tests/ import their helpers) becomes an edge, and the graph must have no cycle. Imports inside
functions count: they run too, only later. The body of `if __name__ == "__main__":` does not: it runs as
the module __main__, which nothing imports."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def project_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in ("out", "__pycache__") for part in p.relative_to(ROOT).parts))


def is_main_block(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators))


def imported_names(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(dotted module, names taken from it) of every import outside `if __name__ == "__main__":` blocks;
    a relative import comes back with its leading dots."""
    out = []

    def visit(node):
        if is_main_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def module_file(dotted: str, roots: list[Path]) -> Path | None:
    """The file that `import dotted` runs last (a.b -> a/b.py or a/b/__init__.py), searched in `roots`."""
    for root in roots:
        base = root.joinpath(*dotted.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if p.is_file():
                return p
    return None


def edges(path: Path) -> set[Path]:
    """The project files that `path` imports. `from pkg import name` is an edge to pkg/name.py when that is a
    module, else to pkg itself; a package's module is below its package (verifiers/code.py importing
    verifiers.common is no edge back to verifiers/__init__.py)."""
    roots = [ROOT, path.parent]
    out = set()
    for dotted, names in imported_names(ast.parse(path.read_text(), str(path))):
        if dotted.startswith("."):   # relative: from the importer's package
            level = len(dotted) - len(dotted.lstrip("."))
            pkg = path.parent
            for _ in range(level - 1):
                pkg = pkg.parent
            rel = dotted.lstrip(".")
            dotted = ".".join([*pkg.relative_to(ROOT).parts, *([rel] if rel else [])])
            roots = [ROOT]
        target = module_file(dotted, roots) if dotted else None
        subs = [module_file(f"{dotted}.{n}", roots) for n in names] if dotted else []
        if any(subs):
            out |= {s for s in subs if s}
            if target and not all(subs):   # some names are the package's own attributes
                out.add(target)
        elif target:
            out.add(target)
    out.discard(path)
    return out


def find_cycle(graph: dict) -> list | None:
    """One cycle of the directed graph as a list of nodes (the first repeated at the end), or None."""
    state, stack = {}, []

    def dfs(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = dfs(m)
                if found:
                    return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state:
            found = dfs(n)
            if found:
                return found
    return None


def test_find_cycle_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"d"}}) == ["d", "d"]


def test_edges_read_the_imports_the_code_runs(tmp_path):
    """The edges of the three analysis files as they are today: the import inside a function counts, the one
    under __main__ does not."""
    e = lambda name: {p.name for p in edges(ROOT / name)}  # noqa: E731
    assert {"stats.py", "plots.py"} <= e("analyze.py")   # plots: inside run_eval and friends
    assert "report.py" not in e("analyze.py")     # only its `if __name__ == "__main__":` part imports report
    assert {"analyze.py", "plots.py", "stats.py"} <= e("report.py")   # plots: inside run_report
    assert "analyze.py" not in e("plots.py") and "stats.py" in e("plots.py")
    # the test's own walker against a hand-made case: a cycle hidden in a function, and a __main__ import
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    (tmp_path / "c.py").write_text("if __name__ == '__main__':\n    import a\n")
    graph = {p: edges(p) for p in (tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py")}
    assert graph[tmp_path / "c.py"] == set()
    assert [p.name for p in find_cycle(graph)] == ["a.py", "b.py", "a.py"]


def test_no_import_cycle():
    graph = {p: edges(p) for p in project_files()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(str(p.relative_to(ROOT)) for p in cycle)
