"""tools/napari_plugin_checks.py: no Qt binding among the dependencies or imported directly (the manifest's own
validation runs in test_package.py)."""

from tools.napari_plugin_checks import ROOT, binding_imports, dependency_problems, tomllib


def test_the_package_depends_on_no_qt_binding_and_imports_none() -> None:
    assert dependency_problems(tomllib.loads((ROOT / "pyproject.toml").read_text())) == []
    assert binding_imports() == []


def test_a_binding_among_the_dependencies_is_found_but_not_in_an_extra() -> None:
    pyproject = {
        "project": {
            "dependencies": ["qtpy", "PyQt5>=5.15", "pyside6 ; sys_platform == 'linux'", "napari[pyqt6]"],
            "optional-dependencies": {"testing": ["PyQt6"]},
        }
    }
    problems = dependency_problems(pyproject)
    assert len(problems) == 2
    assert repr("PyQt5>=5.15") in problems[0] and repr("pyside6 ; sys_platform == 'linux'") in problems[1]


def test_a_direct_binding_import_is_found_anywhere_in_a_module(tmp_path) -> None:
    package = tmp_path / "src" / "pkg"
    package.mkdir(parents=True)
    (package / "ok.py").write_text("from qtpy.QtWidgets import QLabel\nimport PyQtGraph\n")
    (package / "bad.py").write_text("import PyQt5.QtCore\n\ndef f():\n    from PySide6.QtWidgets import QLabel\n")
    assert binding_imports(tmp_path / "src") == [
        "src/pkg/bad.py:1 imports PyQt5.QtCore: import from qtpy instead",
        "src/pkg/bad.py:4 imports PySide6.QtWidgets: import from qtpy instead",
    ]
