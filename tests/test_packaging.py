"""What any Python package of this kind is expected to carry: a version, a changelog, a py.typed marker."""

from __future__ import annotations

import configparser
from importlib import resources
from pathlib import Path

import tinymixer as tm

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_one_number_everywhere():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"] == tm.__version__
    assert f"## [{tm.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_py_typed_marker_is_shipped():
    assert resources.files("tinymixer").joinpath("py.typed").is_file()
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert "py.typed" in config["options.package_data"]["tinymixer"]
