"""The package's shape (docs/architecture.md): no import cycle, function-level imports included; the public
API resolves lazily; the light modules stay light; the Trainer internals hf_ckd relies on still exist."""

import ast
import inspect
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_ckd"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the hf_ckd modules it imports anywhere in its source (top level, functions, TYPE_CHECKING
    blocks excepted: they never run)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(
                        [
                            *package.split(".")[: len(package.split(".")) - node.level + 1],
                            *([base] if base else []),
                        ]
                    )
                if base.split(".")[0] != "hf_ckd":
                    continue
                # `from . import models` imports a module; `from .x import name` imports module x.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "hf_ckd"]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != module:
                    graph[module].add(resolved)
        graph.setdefault(module, set())
    return graph


def test_no_import_cycle_anywhere():
    graph = import_graph()
    assert len(graph) > 30  # the walk found the package

    def cycle_from(start):
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [c for m in graph if (c := cycle_from(m))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_function_level_imports(tmp_path):
    # The checker is only worth something if it finds imports inside functions (how cycles used to hide).
    graph = import_graph()
    assert "hf_ckd.models" in graph["hf_ckd.teachers"]  # imported inside load_teacher only


@pytest.mark.parametrize(
    "module",
    ["hf_ckd._options", "hf_ckd.losses", "hf_ckd.schedules", "hf_ckd.checkpoint", "hf_ckd.mi"],
)
def test_lower_modules_import_no_upper_module(module):
    upper = {"hf_ckd.trainer", "hf_ckd.sources", "hf_ckd.callbacks", "hf_ckd.scripts", "hf_ckd.export"}
    graph = import_graph()
    reached, stack = set(), [m for m in graph if m == module or m.startswith(module + ".")]
    while stack:
        for nxt in graph[stack.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                stack.append(nxt)
    assert not reached & upper, f"{module} reaches {sorted(reached & upper)}"


@pytest.mark.parametrize(
    "statement", ["import hf_ckd", "import hf_ckd.losses", "from hf_ckd import CheckpointDistillConfig"]
)
def test_light_imports_defer_trainer_and_timm(statement):
    probe = "; import sys; print(sorted(m for m in ('transformers.trainer', 'timm', 'datasets') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", statement + probe], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"{statement} imported {out.stdout.strip()}"


def test_public_api_resolves_lazily():
    import hf_ckd

    assert set(hf_ckd.__all__) == {"__version__", *hf_ckd._EXPORTS}
    for name in hf_ckd.__all__:
        assert getattr(hf_ckd, name) is not None, name
    assert set(hf_ckd.__all__) <= set(dir(hf_ckd))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        hf_ckd.Nope  # noqa: B018


def test_trainer_internals_hf_ckd_relies_on_still_exist():
    """hf_ckd._trainer_internals sets two private Trainer attributes (no public hook exists). If a
    transformers release renames them, this fails and names the one that moved."""
    from transformers import Trainer

    from hf_ckd import _trainer_internals as internals

    columns = inspect.getsource(Trainer._set_signature_columns_if_needed)
    assert internals.SIGNATURE_COLUMNS in columns, (
        "Trainer._set_signature_columns_if_needed no longer sets it"
    )
    removal = inspect.getsource(Trainer._get_collator_with_removed_columns)
    assert internals.SIGNATURE_COLUMNS in removal, "RemoveColumnsCollator no longer reads _signature_columns"
    counting = inspect.getsource(Trainer._get_num_items_in_batch)
    assert internals.LOSS_SHIFTS_LABELS in counting, "Trainer._get_num_items_in_batch no longer reads it"
