"""The package's layers point one way (docs/architecture.md).

Every ``import`` in ``sniper/`` is read, including those inside functions: a lazy import is
still a dependency. The rules that matter: the chip engine imports no torch, the model knows
neither data nor engine, nothing but the CLI imports the CLI, and the layers below the
engine never reach up.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "sniper"

# layer -> packages/modules (prefixes of dotted names) it must not import
GEOMETRY = (
    "sniper.scales", "sniper.config", "sniper.boxes", "sniper.io", "sniper.errors", "sniper.runtime", "sniper.outputs",
)  # fmt: skip
UPPER = ("sniper.data", "sniper.model", "sniper.ops", "sniper.engine", "sniper.viz", "sniper.cli")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    **{m: (*UPPER, "sniper.chips", "torch", "torchvision") for m in GEOMETRY},
    "sniper.chips": (*UPPER, "torch", "torchvision", "PIL"),
    "sniper.data": ("sniper.model", "sniper.ops", "sniper.engine", "sniper.viz", "sniper.cli"),
    "sniper.model": ("sniper.data", "sniper.engine", "sniper.viz", "sniper.cli"),
    "sniper.ops": ("sniper.data", "sniper.model", "sniper.engine", "sniper.viz", "sniper.cli"),
    "sniper.viz": ("sniper.model", "sniper.ops", "sniper.engine", "sniper.cli"),
    "sniper.engine": ("sniper.cli",),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file, as dotted names."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            # `from sniper import viz` imports the module sniper.viz
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    for layer in sorted(FORBIDDEN, key=len, reverse=True):
        if _matches(module, layer):
            return layer
    return None


MODULES = sorted(ROOT.rglob("*.py"))


def violations() -> list[str]:
    bad = []
    for path in MODULES:
        mod = module_name(path)
        layer = layer_of(mod)
        for imp in sorted(imports_of(path)):
            # `python -m sniper` is the CLI's second entry point, beside the console script
            if not _matches(mod, "sniper.cli") and mod != "sniper.__main__" and _matches(imp, "sniper.cli"):
                bad.append(f"{mod} imports {imp}: only sniper.cli may import the CLI")
            if layer is not None and any(_matches(imp, f) for f in FORBIDDEN[layer]):
                bad.append(f"{mod} ({layer}) imports {imp}")
    return bad


def test_every_module_is_read():
    assert len(MODULES) > 40
    assert {"sniper.chips", "sniper.cli.main", "sniper.data.chip_table", "sniper.model.build"} <= {
        module_name(p) for p in MODULES
    }


def test_layers_point_one_way():
    assert violations() == []


@pytest.mark.parametrize(
    "module, source, expected",
    [
        ("sniper.chips", "import torch\n", "sniper.chips (sniper.chips) imports torch"),
        ("sniper.model.build", "def f():\n    from sniper.data.coco import load_coco\n",
         "sniper.model.build (sniper.model) imports sniper.data.coco"),
        ("sniper.engine.pipeline", "from sniper import cli\n", "only sniper.cli may import the CLI"),
        ("sniper.data.export", "from ..engine import predict\n", "imports sniper.engine"),
    ],
)  # fmt: skip
def test_the_checker_sees_a_planted_violation(tmp_path, monkeypatch, module, source, expected):
    """The rule check itself: a forbidden import planted in a copy of the tree is reported."""
    import shutil

    tree = tmp_path / "sniper"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns("__pycache__"))
    target = tree.joinpath(*module.split(".")[1:]).with_suffix(".py")
    target.write_text(target.read_text() + "\n" + source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tree)
    monkeypatch.setattr(sys.modules[__name__], "MODULES", sorted(tree.rglob("*.py")))
    assert any(expected in v for v in violations()), violations()


def test_chip_engine_and_chip_table_load_without_torch():
    """At run time too: mining chips (and reading COCO) never loads torch."""
    code = (
        "import sys, sniper.chips, sniper.data.chip_table, sniper.data.coco, sniper.config; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
