"""The package's shape: no import cycles, and one formats table that everything reads.

The import graph counts every ``import`` statement, including the ones inside functions (a lazy
import is still a dependency), except those under ``if TYPE_CHECKING:``. Importing ``a.b.c`` also
imports the packages ``a`` and ``a.b``, so package ``__init__`` re-exports count too.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from edgederm.formats.table import FORMATS, format_for

PKG = Path(__file__).resolve().parents[1] / "edgederm"
# The one cycle allowed: the model registry imports its model modules (plugin loading), which
# register themselves through it.
ALLOWED = [{"edgederm.models.papers", "edgederm.models.registry", "edgederm.models.zoo"}]


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, name: str = name, is_pkg: bool = is_pkg) -> None:
            for ch in ast.iter_child_nodes(node):
                if isinstance(ch, ast.If) and "TYPE_CHECKING" in ast.unparse(ch.test):
                    continue
                if isinstance(ch, ast.Import):
                    edges[name].update(a.name for a in ch.names if a.name in mods)
                elif isinstance(ch, ast.ImportFrom):
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    if ch.level:
                        base = base[: len(base) - (ch.level - 1)]
                        target = ".".join(base + ([ch.module] if ch.module else []))
                    else:
                        target = ch.module or ""
                    for a in ch.names:
                        full = f"{target}.{a.name}"
                        if full in mods:
                            edges[name].add(full)
                        elif target in mods:
                            edges[name].add(target)
                visit(ch)

        visit(ast.parse(path.read_text(encoding="utf-8")))
    for m in list(edges):  # importing a.b.c runs a/__init__ and a/b/__init__
        for t in list(edges[m]):
            parts = t.split(".")
            for i in range(1, len(parts)):
                pkg = ".".join(parts[:i])
                if pkg in mods and pkg != m and not m.startswith(pkg + "."):
                    edges[m].add(pkg)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_but_the_model_registry() -> None:
    found = cycles(import_graph())
    extra = [sorted(c) for c in found if c not in ALLOWED]
    assert not extra, f"import cycles: {extra}"


def test_only_the_formats_table_maps_suffixes() -> None:
    """No module outside formats/ spells out an artifact suffix list (the table is the one map)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        if "formats" in path.relative_to(PKG).parts or path.name == "runner.py":  # runner.py: stdlib-only remote copy
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ('".engine", ".plan"', '{".xml":', '(".pt", ".pth", ".ckpt")', '".tflite": "'):
            if needle in text:
                offenders.append(f"{path.relative_to(PKG)}: {needle}")
    assert not offenders, offenders


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_row_points_at_real_code(name: str) -> None:
    fmt = FORMATS[name]
    for ref in filter(None, [fmt.runtime.split(":")[0], fmt.metadata, fmt.exporter]):
        assert importlib.util.find_spec(ref) is not None, ref
    # The runtime class and every build function exist (read from the source: no toolkit import).
    module, _, cls = fmt.runtime.partition(":")
    src = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")  # type: ignore[arg-type, union-attr]
    assert f"class {cls}(" in src
    if fmt.metadata:
        meta = Path(importlib.util.find_spec(fmt.metadata).origin).read_text(encoding="utf-8")  # type: ignore[arg-type, union-attr]
        assert "def read_card_text(" in meta
    if fmt.targets:
        exp = Path(importlib.util.find_spec(fmt.exporter).origin).read_text(encoding="utf-8")  # type: ignore[arg-type, union-attr]
        for t in fmt.targets:
            assert f"def {t.build}(" in exp, (t.name, t.build)
            if t.precheck:
                assert f"def {t.precheck}(" in exp
    for suffix in fmt.suffixes:
        assert format_for(f"model{suffix.upper()}") is fmt  # case-insensitive


def test_runtime_export_and_bench_read_the_table() -> None:
    from edgederm.bench.targets import runtime_name
    from edgederm.export.registry import list_targets
    from edgederm.runtime.registry import BACKENDS

    assert list(BACKENDS) == list(FORMATS)
    targets = {t.name: t for t in list_targets()}
    for fmt in FORMATS.values():
        assert runtime_name(fmt.name) == fmt.label
        for spec in fmt.targets:
            t = targets[spec.name]
            assert (t.format, t.suffix, t.precision) == (fmt.name, fmt.suffixes[0], spec.precision)
            assert dict(t.options) == dict(spec.options) and tuple(t.auto) == tuple(spec.auto)


def test_the_docs_table_is_generated_from_the_formats_table() -> None:
    from edgederm.export import targets_table

    doc = (PKG.parent / "export" / "README.md").read_text(encoding="utf-8")
    assert targets_table() in doc, "export/README.md's targets table is stale: regenerate it with targets_table()"


def test_a_folder_shaped_format_is_found_as_one_artifact(tmp_path: Path) -> None:
    """A format whose artifact is a folder (CoreML's .mlpackage) needs only its row: the bench's
    artifact expander then lists the folder once and none of the files inside it."""
    from edgederm.bench.targets import expand_artifacts
    from edgederm.formats.table import Format, register_format
    from edgederm.runtime.registry import BACKENDS

    register_format(Format(name="zz-folder", suffixes=(".zzpackage",), label="zz", runtime="edgederm.formats.onnx.runtime:OnnxPredictor",
                           folder=True))
    try:
        pkg = tmp_path / "exports" / "model.zzpackage"
        (pkg / "Data").mkdir(parents=True)
        (pkg / "Data" / "weights.bin").write_bytes(b"\0")
        (pkg / "Manifest.json").write_text("{}")
        (tmp_path / "exports" / "other.onnx").write_bytes(b"\0")
        (tmp_path / "exports" / "stray.zzpackage").write_text("a file, not a package")
        found = expand_artifacts([tmp_path / "exports"])
        assert sorted(p.name for p in found) == ["model.zzpackage", "other.onnx"]
        assert format_for(pkg).name == "zz-folder"
    finally:
        FORMATS.pop("zz-folder", None)
        BACKENDS.pop("zz-folder", None)
