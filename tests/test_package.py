"""The package's shape: no import cycles among its modules, nothing installed by importing it."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "shg_fast"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name and not name.startswith(t + "."))
    return found


def test_no_import_cycles():
    """Imports point one way: a cycle (even through an import inside a function) hides an inverted layer."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: imports_of(path, name, set(paths)) for name, path in paths.items()}
    cycles = []
    state = {}  # name -> "open" while on the DFS stack, "done" after

    def visit(name, stack):
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert "shg_fast.kernels.conv_bn_relu" in graph  # the Triton kernels are modules of the package


def test_importing_installs_no_process_wide_hook():
    """``import shg_fast`` leaves PyTorch's global module and optimizer hooks alone; the first fast
    model installs the staleness hooks it needs."""
    code = """
import torch
import torch.nn.modules.module as mm
import torch.optim.optimizer as oo

def hooks():
    return {k: len(v) for mod in (mm, oo) for k, v in vars(mod).items()
            if k.startswith("_global_") and "hook" in k and isinstance(v, dict)}

before = hooks()
import shg_fast, shg_fast.cli, shg_fast.engine, shg_fast.plan, shg_fast.train, shg_fast.pose
assert hooks() == before, (before, hooks())
shg_fast.StackedHourglass(1, 16)
grew = sorted(k for k, n in hooks().items() if n > before[k])
assert grew, "the fast model installed no staleness hook"
print(" ".join(grew))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "_global_optimizer_post_hooks" in result.stdout and "_global_module_registration_hooks" in result.stdout
