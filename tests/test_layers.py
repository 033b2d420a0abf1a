"""Layers that point one way: the asr library never imports the data_scripts programs built on it."""

import ast
from pathlib import Path

ASR = Path(__file__).resolve().parents[1] / "asr"


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_asr_module_imports_data_scripts():
    sources = sorted(ASR.rglob("*.py"))
    assert sources
    upward = {
        str(path.relative_to(ASR.parent)): sorted(name for name in imported_modules(path) if name.split(".")[0] == "data_scripts")
        for path in sources
    }
    assert {path: names for path, names in upward.items() if names} == {}


def test_the_scan_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from data_scripts import librispeech\n    import data_scripts.fsdd\n")
    assert imported_modules(source) == {"data_scripts", "data_scripts.fsdd"}


def test_mnist_takes_its_optimizer_from_asr_optim_not_the_ctc_trainer():
    assert "asr.train" not in imported_modules(ASR / "mnist.py")


# asr.rnn's modules, bottom up: each imports only those before it (cells never the loop or the
# public functions), and none imports another asr module.
RNN_LAYERS = ("native", "gradient", "loop", "cells", "dropout", "api")


def test_rnn_modules_import_only_the_ones_below_them():
    package = ASR / "rnn"
    assert sorted(path.stem for path in package.glob("*.py")) == sorted(RNN_LAYERS + ("__init__",))
    for index, stem in enumerate(RNN_LAYERS):
        source = package / f"{stem}.py"
        own = {name for name in imported_modules(source) if name.split(".")[0] == "asr"}
        allowed = {f"asr.rnn.{below}" for below in RNN_LAYERS[:index]}
        assert own <= allowed, f"asr/rnn/{stem}.py imports {sorted(own - allowed)}"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
        assert not relative, f"asr/rnn/{stem}.py: use absolute imports, which this test can check"
