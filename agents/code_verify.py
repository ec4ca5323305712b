"""Execution-verified code: an LLM writes a Python solution to a programming problem, the
task's sandbox runs the problem's unit tests against it, and the verdict and the test
output become the row.

Input rows (``workflows/data/code_problems.jsonl``): ``id``, ``prompt``,
``signature`` and ``tests`` (Python source defining ``test_*`` functions that
assert on the solution's functions). ``task.state`` (the row's ``result``):
``code``, ``verdict`` (pass, fail, error: the solution does not import,
timeout), ``passed``, ``failed``, ``total``, ``failures``, ``output`` (the
tail of stdout and stderr), ``returncode``, ``elapsed_s`` and ``sandbox``.
Against the simulator the code is filler text, so the verdict is ``error``;
with a real model it is meaningful.
"""

from __future__ import annotations

import json
import re
from typing import Any

from matrix_p2p.agent import Agent, Context
from matrix_p2p.envelope import Task
from matrix_p2p.errors import FailTask
from matrix_p2p.resources.base import ResourceGone
from matrix_p2p.resources.sandbox import restart_trajectory, sandbox

OUTPUT_KEPT = 2000  # characters of test output kept in the row
_CODE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

# Runs in the sandbox with a bare python3: imports the solution, runs every test_*,
# prints one JSON summary line last. Exit 0 only when every test passed.
HARNESS = '''\
import json, os, sys
sys.path.insert(0, os.getcwd())
try:
    import solution
except BaseException as exc:
    print(json.dumps({"verdict": "error", "error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(2)
ns = dict(vars(solution))
with open("tests.py") as f:
    exec(compile(f.read(), "tests.py", "exec"), ns)
passed, failures = [], []
for name in sorted(k for k in ns if k.startswith("test_") and callable(ns[k])):
    try:
        ns[name]()
        passed.append(name)
    except BaseException as exc:
        failures.append(f"{name}: {type(exc).__name__}: {exc}")
print(json.dumps({"verdict": "fail" if failures else "pass", "passed": len(passed),
                  "failed": len(failures), "failures": failures}))
sys.exit(1 if failures else 0)
'''


def extract_code(text: str) -> str:
    """The last fenced code block of a model's answer, else the whole answer."""
    blocks = _CODE_RE.findall(text)
    return (blocks[-1] if blocks else text).strip() + "\n"


def _field(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if not isinstance(value, str) or not value:
        raise FailTask(f"input row has no {name!r} text")
    return value


class Coder(Agent):
    """Asks the LLM for a solution; keeps the code in ``state['code']``."""

    async def handle(self, task: Task, ctx: Context) -> None:
        prompt = _field(task.row, "prompt")
        messages = [{"role": "system", "content": self.role.system},
                    {"role": "user", "content": f"{prompt}\n\n{self.role.prompt}".strip()}]
        reply = (await ctx.chat(messages)).unwrap()
        task.state["code"] = extract_code(reply.text)
        ctx.say(reply.text)


class Verifier(Agent):
    """Runs the problem's tests against ``state['code']`` in the task's sandbox."""

    async def handle(self, task: Task, ctx: Context) -> None:
        box = sandbox(ctx)
        files = {"solution.py": str(task.state.get("code", "")),
                 "tests.py": _field(task.row, "tests"), "run_tests.py": HARNESS}
        timeout = float(self.role.options.get("timeout_s", 10.0))
        try:
            result, lease = await box.run(["python3", "-I", "-S", "run_tests.py"],
                                          files=files, timeout_s=timeout)
        except ResourceGone as exc:
            # nothing lives in the sandbox between hops here: run again on a fresh one
            restart_trajectory(task, ctx, box.pool.name, str(exc))
            return
        output = result.stdout + result.stderr
        summary = _summary(result.stdout)
        verdict = "timeout" if result.timed_out else str(summary.get("verdict", "error"))
        task.state.update(
            checked=True, verdict=verdict, passed=int(summary.get("passed", 0)),
            failed=int(summary.get("failed", 0)),
            total=int(summary.get("passed", 0)) + int(summary.get("failed", 0)),
            failures=summary.get("failures", [summary["error"]] if "error" in summary else []),
            output=output[-OUTPUT_KEPT:], returncode=result.returncode,
            elapsed_s=result.elapsed_s, sandbox=lease.ref)
        ctx.say(verdict, sandbox=lease.ref, sandbox_server=lease.where)


def _summary(stdout: str) -> dict[str, Any]:
    lines = stdout.strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        doc = None
    return doc if isinstance(doc, dict) else {}
