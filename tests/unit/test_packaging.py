"""Bundled agents and workflows install under their own import names, so a package
that owns the name ``agents`` (or ``workflows``) and matrix_p2p work side by side."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import agents, workflows
assert agents.OWNER == "someone else" and workflows.OWNER == "someone else"
from matrix_p2p.agent import make_agent
from matrix_p2p.workflow.loader import load
for name in ("coral", "dummy"):
    spec = load(name)
    for role in spec.roles.values():
        make_agent(spec, role)
import agents
assert agents.OWNER == "someone else"
print("ok")
"""


def test_a_package_named_agents_does_not_shadow_the_bundled_ones(tmp_path: Path) -> None:
    for name in ("agents", "workflows"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text('OWNER = "someone else"\n')
    # the other package comes first on the path, as an installed one would for a user
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True, text=True,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_every_package_folder_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = cfg["package-dir"]
    found = set()
    for top, folder in [("matrix_p2p", "matrix_p2p"), *[(k, v) for k, v in dirs.items()]]:
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if "data" in rel.parts:
                continue
            found.add(".".join((top, *rel.parts)))
    assert found == listed


OLD_REF = """
import structlog
from matrix_p2p.agent import make_agent
from matrix_p2p.workflow import spec as specmod
s = specmod.parse("name: old\\nroles:\\n  a: {agent: 'agents.dummy:Talker', llm: null}\\n"
                  "routing: {type: cycle, roles: [a]}\\n", path="old.yaml")
with structlog.testing.capture_logs() as logs:
    agent = make_agent(s, s.roles["a"])
assert type(agent).__module__ == "matrix_p2p_agents.dummy", type(agent).__module__
assert [e["event"] for e in logs] == ["workflow.old_agent_reference"], logs
print("ok")
"""


def test_old_agent_references_still_load_with_a_warning(tmp_path: Path) -> None:
    # outside the checkout: there the top-level agents/ folder is not importable as `agents`
    r = subprocess.run([sys.executable, "-c", OLD_REF], cwd=tmp_path, capture_output=True,
                       text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
