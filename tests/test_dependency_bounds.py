"""The installed packages satisfy setup.py's install_requires (its lower bounds are what the code needs)."""
import ast
import os
from importlib import metadata

from packaging.requirements import Requirement

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def install_requires():
    tree = ast.parse(open(SETUP, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return [Requirement(r) for r in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no install_requires")


def test_installed_versions_satisfy_the_bounds():
    requirements = install_requires()
    assert {"torch", "transformers", "peft"} <= {r.name for r in requirements}
    bad = []
    for req in requirements:
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            bad.append(f"{req}: installed {version}")
    assert not bad, bad
