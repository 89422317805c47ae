"""The shape of dpmcli's code, measured with Python's ast: the limits that keep one place per concept.

    python benchmarks/code_shape.py            # prints every finding, exits 1 if a limit is broken
    python benchmarks/code_shape.py --quiet    # the summary line only

Limits (over dpmcli/):
* no import cycle between dpmcli modules, function-level imports included;
* no private name (``_x``) imported from another dpmcli module;
* no function longer than 80 lines (Typer command functions excepted: their signatures are the options);
* no function with more than 6 positional parameters (keyword-only ones are fine; ``__init__``
  methods decorated with diffusers' ``register_to_config`` are excepted: diffusers requires them);
* no module longer than 500 lines;
* no function-level import of a dpmcli module, unless that module needs a heavy optional library
  at import time (diffusers, transformers, matplotlib, scikit-learn, rich, typer): lazy imports
  are for those alone, so the real dependencies show at the top of each module;
* diffusers' scheduler-config words spelled out in at most two modules.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "dpmcli"
MAX_FUNCTION_LINES = 80
MAX_POSITIONAL = 6
MAX_MODULE_LINES = 500
DIFFUSERS_WORDS = ("use_karras_sigmas", "final_sigmas_type", "timestep_spacing")
MAX_MODULES_PER_WORD = 2
HEAVY = ("diffusers", "transformers", "matplotlib", "sklearn", "rich", "typer")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]):
    """(imported module, imported names, line) for every import of a dpmcli module, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, is_package, node.level, node.module)
            if target not in known:
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]
            for sub in submodules:
                yield sub, [], node.lineno
            others = [n for n in names if f"{target}.{n}" not in known]
            if others or not submodules:  # `from . import solvers` reads the submodule, not the package
                yield target, others, node.lineno


def _imports_heavy_at_top(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Try):
            nodes = node.body
        else:
            nodes = [node]
        for inner in nodes:
            if isinstance(inner, ast.Import) and any(a.name.split(".")[0] in HEAVY for a in inner.names):
                return True
            if isinstance(inner, ast.ImportFrom) and inner.level == 0 and (inner.module or "").split(".")[0] in HEAVY:
                return True
    return False


def _guarded(tree: ast.Module, node: ast.AST) -> bool:
    """An import under ``if TYPE_CHECKING:`` at module level (types only, never run)."""
    for top in tree.body:
        if isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test):
            if any(child is node for child in ast.walk(top)):
                return True
    return False


def is_typer_command(node: ast.FunctionDef) -> bool:
    for decorator in node.decorator_list:
        call = decorator.func if isinstance(decorator, ast.Call) else decorator
        text = ast.unparse(call)
        if text.endswith("command") or text in ("app.callback",):
            return True
    return False


def is_register_to_config(node: ast.FunctionDef) -> bool:
    return any(ast.unparse(d).endswith("register_to_config") for d in node.decorator_list)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle's strongly connected component (Tarjan), as sorted module lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def measure() -> dict[str, list[str]]:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p): p for p in files}
    known = set(modules)
    findings: dict[str, list[str]] = {
        k: [] for k in ("cycles", "private", "long_functions", "positional", "long_modules", "diffusers_words", "local_imports")
    }
    heavy = {m for m, p in modules.items() if _imports_heavy_at_top(ast.parse(p.read_text()))}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    words: dict[str, set[str]] = {w: set() for w in DIFFUSERS_WORDS}
    for module, path in modules.items():
        text = path.read_text()
        tree = ast.parse(text)
        rel = path.relative_to(ROOT.parent)
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            findings["long_modules"].append(f"{rel}: {lines} lines")
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level and not _guarded(tree, node):
                for target, _, line in imports_of(node, module, path.name == "__init__.py", known):
                    if target not in heavy and target != module:
                        findings["local_imports"].append(f"{rel}:{line}: imports {target} inside a function")
        for target, names, line in imports_of(tree, module, path.name == "__init__.py", known):
            if target != module:
                graph[module].add(target)
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    findings["private"].append(f"{rel}:{line}: imports {name} from {target}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and not is_typer_command(node):
                    findings["long_functions"].append(f"{rel}:{node.lineno}: {node.name} is {length} lines")
                positional = node.args.posonlyargs + node.args.args
                count = len([a for a in positional if a.arg not in ("self", "cls")])
                if count > MAX_POSITIONAL and not is_register_to_config(node):
                    findings["positional"].append(f"{rel}:{node.lineno}: {node.name} takes {count} positional parameters")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) or isinstance(node, (ast.Name, ast.arg, ast.keyword, ast.Attribute)):
                spelled = node.value if isinstance(node, ast.Constant) else getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "attr", None)
                for word in DIFFUSERS_WORDS:
                    if spelled and word in spelled:
                        words[word].add(str(rel))
    for component in find_cycles(graph):
        findings["cycles"].append(" <-> ".join(component))
    for word, where in words.items():
        if len(where) > MAX_MODULES_PER_WORD:
            findings["diffusers_words"].append(f"{word}: spelled in {len(where)} modules: {', '.join(sorted(where))}")
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    findings = measure()
    total = sum(len(v) for v in findings.values())
    if not args.quiet:
        for kind, items in findings.items():
            print(f"{kind}: {len(items)}")
            for item in items:
                print(f"  {item}")
    print(f"code shape: {total} finding(s) over {ROOT.name}/")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
