"""The installed package: the `nanocrystal` console script, `nanocrystal train`, and the lock against pyproject.toml."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from nanocrystal.cli import main
from nanocrystal.config import ROOT


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_lock_pins_every_direct_dependency_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked_versions()
    extras = project["optional-dependencies"]
    direct = [Requirement(r) for r in project["dependencies"] + extras["test"] + extras["ray"]]
    unlocked = [str(r) for r in direct if r.name.lower() not in pins]
    assert not unlocked, f"not in requirements.txt (run scripts/lock.sh): {unlocked}"
    outside = [f"{r} (locked {pins[r.name.lower()]})" for r in direct
               if not r.specifier.contains(pins[r.name.lower()], prereleases=True)]
    assert not outside, f"locked outside pyproject.toml's range (run scripts/lock.sh): {outside}"
    assert pins["torch"].endswith("+cpu")  # a CUDA build is several GB and useless on these machines


def test_console_script_is_the_cli():
    (script,) = entry_points(group="console_scripts", name="nanocrystal")
    assert script.load() is main


def test_console_script_validates_a_file(recipes_path):
    script = Path(sys.executable).parent / "nanocrystal"
    done = subprocess.run([str(script), "validate", str(recipes_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"{recipes_path}: 3,489 rows" in done.stdout


def test_train_subcommand_passes_every_flag_to_train_py(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "shape", "--help"])
    assert exit_.value.code == 0 and "--size_as_input" in capsys.readouterr().out  # train.py's own help
    missing = tmp_path / "missing.json"
    assert main(["train", "--config", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err


def package_imports() -> dict[str, set[str]]:
    """module -> the package's modules it imports (at the top or inside a function)."""
    import ast

    modules = {path.stem: path for path in (ROOT / "nanocrystal").glob("*.py")}
    graph = {}
    for name, path in modules.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nanocrystal."):
                imported.add(node.module.split(".")[1])
        graph[name] = (imported & set(modules)) - {name}
    return graph


def test_package_imports_form_no_cycle():
    # the layers import one way (docs: README's layout, bottom to top); a cycle, even through a function-level import,
    # would tie two layers together
    graph, done, path = package_imports(), set(), []

    def visit(module: str) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path[path.index(module):] + [module])}"
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    assert {"cli", "runs", "config"} <= set(graph) and graph["cli"]  # the graph was read
    for module in sorted(graph):
        visit(module)
