"""Workflow files: YAML validated into a typed, immutable spec. Pure (reading files is
``loader``, importing agent and router classes is ``refs``).

A bad file gets one ``ConfigError`` line that names the file and the field, for
example ``workflows/x.yaml: roles.judge.concurrency: Expected `int`, got `str```.
Unknown keys are rejected here (unlike envelopes): in a file a person wrote, an
unknown key is almost always a typo.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

import msgspec
import yaml

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.refs import import_ref

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_T = TypeVar("_T")
REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Spec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


class LLMResource(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    endpoints: list[str] = []
    endpoints_file: str | None = None
    model: str | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    timeout_s: float = 120.0
    max_retries: int = 4
    initial_limit: int = 32
    max_limit: int = 2048
    sticky: bool = True
    # price per 1,000 tokens, in the currency of your choice: `run`'s summary shows the cost
    price_per_1k_prompt: float | None = None
    price_per_1k_completion: float | None = None


class SandboxResource(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A pool of sandboxes (see ``resources.sandbox``). ``urls`` empty: ``--sandbox-url``,
    or ``run`` starts a sandbox server in-process with ``pool`` slots and these limits."""

    urls: list[str] = []
    pool: int = 4
    ttl_s: float = 300.0
    timeout_s: float = 30.0  # default execution timeout
    # how long a hop waits for a free sandbox before it is handed back (nak) for later:
    # short, so tasks that hold sandboxes are never starved of worker slots by waiters
    acquire_timeout_s: float = 10.0
    max_restarts: int = 2  # trajectories restarted on a fresh sandbox when the old one is gone
    memory_mb: int = 1024
    cpu_s: int = 60


class Resources(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    llm: dict[str, LLMResource] = {}
    sandbox: dict[str, SandboxResource] = {}


class RoleSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    agent: str
    llm: str | None = "default"
    prompt: str = ""
    system: str = ""
    concurrency: int = 1000
    max_ack_pending: int = 20000
    hop_timeout_s: float = 600.0
    options: dict[str, Any] = {}
    resources: list[str] = []  # names under resources.sandbox this role leases
    name: str = ""  # filled from the mapping key


class CycleRouting(_Spec, tag="cycle", tag_field="type", frozen=True, forbid_unknown_fields=True,
                   kw_only=True):
    """Visit ``roles`` in order, round after round, until ``stop_when`` or ``max_turns``."""

    roles: list[str]
    stop_when: str | None = None
    max_turns: int = 10
    on_max_turns: Literal["done", "failed"] = "done"


class PythonRouting(_Spec, tag="python", tag_field="type", frozen=True,
                    forbid_unknown_fields=True, kw_only=True):
    """A router class (``module:Class``) with ``entry(spec)`` and ``route(task, spec)``."""

    router: str
    options: dict[str, Any] = {}


Routing = CycleRouting | PythonRouting


class HFSource(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    dataset: str
    split: str = "train"
    config: str | None = None


class SourceSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str | None = None  # JSONL file or glob, relative to the workflow file
    hf: HFSource | None = None
    id_field: str | None = None  # a stable key in each row; default: the row's position


class SinkSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    path: str = "out/{workflow}.jsonl"
    # None: the output's extension decides (runtime/files.py out_format)
    format: Literal["jsonl", "jsonl.zst", "parquet"] | None = None
    # record each turn's request messages in the envelope and the row (they grow with
    # the dialogue, so envelopes get much bigger)
    messages: bool = False
    kept_only: bool = False  # write only done rows with result.kept true (document filters)


class AbortOnFailures(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A clearly broken run stops (``runset/broken.py``): when at least ``share`` of the
    first ``first`` tasks that finish in a run failed with the same reason (numbers and
    ids aside), ``run`` stops, leaves the unfinished tasks in the store and exits 1."""

    first: int = 20  # 0: never stop
    share: float = 0.8


class Limits(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    max_deliveries: int = 5  # per hop, then the task fails with the reason
    max_hops: int = 200  # a runaway router fails the task instead of looping forever
    ack_wait_s: float = 30.0
    max_inflight: int = 10000  # admission window of `submit`: tasks alive in the stream
    retry_backoff_s: float = 2.0
    # a row or state value bigger than this (msgpack bytes) travels in the object store,
    # the envelope carrying a reference (runtime/offload.py); null: never offload
    offload_bytes: int | None = 256 * 1024
    offload_ttl_s: float = 7 * 86400.0  # backstop: objects a crashed hop orphaned expire
    # stop a run whose first tasks fail the same way; 0 or null: never stop
    abort_on_failures: AbortOnFailures | int | None = AbortOnFailures()


# The keys of a dataset row (runtime/sink.py ``to_row``): a figure's field path starts
# with one of them (tests/unit/test_figures.py keeps the two in step).
ROW_FIELDS = ("id", "workflow", "workflow_version", "code_version", "status", "error", "source",
              "row_index", "trial", "input", "result", "dialogue", "usage", "timings", "hops",
              "parent", "children")
FIGURE_KINDS = ("mean", "rate", "count", "counts", "distinct", "ratio")


class Figure(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One number of the end-of-run summary, over the rows a run writes
    (``report/figures.py``). FIELD is a dotted path into a row (``result.reward``)."""

    label: str
    mean: str | None = None  # mean of a numeric FIELD
    rate: str | None = None  # share of rows with FIELD where it is truthy (or == equals)
    count: str | None = None  # rows where FIELD is truthy (or == equals)
    counts: str | None = None  # how many rows have each value of FIELD
    distinct: str | None = None  # how many different values FIELD takes
    ratio: list[str] | None = None  # [label A, label B]: figure A's value over figure B's
    equals: str | int | float | bool | None = None  # for rate and count

    @property
    def kind(self) -> str:
        return next(k for k in FIGURE_KINDS if getattr(self, k) is not None)


class WorkflowSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    roles: dict[str, RoleSpec]
    routing: Routing
    version: str = "1"
    description: str = ""
    source: SourceSpec = SourceSpec()
    sink: SinkSpec = SinkSpec()
    trials: int = 1
    seed: int = 0
    subject_prefix: str = "mx"
    resources: Resources = Resources()
    limits: Limits = Limits()
    summary: list[Figure] = []  # the workflow's own figures in `run`'s summary
    path: str = ""  # where it was loaded from, for messages and relative paths
    digest: str = ""  # sha256 of the file's bytes, first 12 hex digits

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent if self.path else Path.cwd()

    def entry_role(self) -> str:
        if isinstance(self.routing, CycleRouting):
            return self.routing.roles[0]
        entry: str = router_instance(self.routing.router, self.path).entry(self)
        return entry

    def llm_for(self, role: str) -> LLMResource | None:
        name = self.roles[role].llm
        if name is None:
            return None
        return self.resources.llm.get(name, LLMResource())


@cache
def router_instance(ref: str, path: str) -> Any:
    """The router a ``type: python`` routing names: imported and made once per file."""
    base = Path(path).parent if path else None
    return import_ref(ref, where=f"{path}: routing.router", base_dir=base)()


def _fmt_path(path: str) -> str:
    # msgspec says `$.roles.judge.concurrency`; people read `roles.judge.concurrency`
    return path.removeprefix("$.").removeprefix("$")


def parse(text: str, *, path: str = "<workflow>") -> WorkflowSpec:
    """Validate YAML text into a spec. Raises ``ConfigError`` naming ``path`` and the field."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    roles = raw.get("roles")
    if isinstance(roles, dict):
        raw["roles"] = {
            k: ({**v, "name": k} if isinstance(v, dict) else v) for k, v in roles.items()
        }
    raw["path"] = path
    raw["digest"] = hashlib.sha256(text.encode()).hexdigest()[:12]
    # msgspec names a mapping's value `roles[...]`; validate entries one by one for the key
    _convert_entries(raw.get("roles"), RoleSpec, "roles", path)
    resources = raw.get("resources")
    if isinstance(resources, dict):
        _convert_entries(resources.get("llm"), LLMResource, "resources.llm", path)
        _convert_entries(resources.get("sandbox"), SandboxResource, "resources.sandbox", path)
    spec = _convert(raw, WorkflowSpec, "", path)
    _check(spec)
    return spec


def _convert(value: Any, typ: type[_T], prefix: str, path: str) -> _T:
    try:
        return msgspec.convert(value, typ, strict=True)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        field = prefix
        if " - at `" in msg:
            msg, _, rest = msg.partition(" - at `")
            sub = _fmt_path(rest.rstrip("`"))
            field = f"{prefix}.{sub}" if prefix and sub else (sub or prefix)
        raise ConfigError(f"{path}: {field + ': ' if field else ''}{msg}") from None


def _convert_entries(mapping: Any, typ: type[Any], prefix: str, path: str) -> None:
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            _convert(value, typ, f"{prefix}.{key}", path)


def _check(spec: WorkflowSpec) -> None:
    def fail(field: str, msg: str) -> None:
        raise ConfigError(f"{spec.path}: {field}: {msg}")

    if not NAME_RE.match(spec.name):
        fail("name", f"{spec.name!r} must be 1-64 letters, digits, '_' or '-'")
    if not NAME_RE.match(spec.subject_prefix):
        fail("subject_prefix", f"{spec.subject_prefix!r} must be letters, digits, '_' or '-'")
    if not spec.roles:
        fail("roles", "at least one role is required")
    for name, role in spec.roles.items():
        if not NAME_RE.match(name):
            fail(f"roles.{name}", "role names must be 1-64 letters, digits, '_' or '-'")
        if not REF_RE.match(role.agent):
            fail(f"roles.{name}.agent", f"{role.agent!r} is not of the form 'module:Class'")
        if role.concurrency < 1:
            fail(f"roles.{name}.concurrency", "must be at least 1")
        if role.max_ack_pending < 1:
            fail(f"roles.{name}.max_ack_pending", "must be at least 1")
        if role.hop_timeout_s <= 0:
            fail(f"roles.{name}.hop_timeout_s", "must be positive")
        if role.llm is not None and role.llm not in spec.resources.llm and role.llm != "default":
            known = ", ".join(sorted(spec.resources.llm)) or "none defined"
            fail(f"roles.{name}.llm", f"unknown LLM resource {role.llm!r} (known: {known})")
        for i, res_name in enumerate(role.resources):
            if res_name not in spec.resources.sandbox:
                known = ", ".join(sorted(spec.resources.sandbox)) or "none defined"
                fail(f"roles.{name}.resources[{i}]",
                     f"unknown resource {res_name!r} (known under resources.sandbox: {known})")
    routing = spec.routing
    if isinstance(routing, CycleRouting):
        if not routing.roles:
            fail("routing.roles", "at least one role is required")
        for i, role_name in enumerate(routing.roles):
            if role_name not in spec.roles:
                fail(f"routing.roles[{i}]", f"unknown role {role_name!r}")
        if routing.max_turns < 1:
            fail("routing.max_turns", "must be at least 1")
    elif not REF_RE.match(routing.router):
        fail("routing.router", f"{routing.router!r} is not of the form 'module:Class'")
    if spec.source.path is not None and spec.source.hf is not None:
        fail("source", "give either `path` or `hf`, not both")
    if spec.trials < 1:
        fail("trials", "must be at least 1")
    lim = spec.limits
    if lim.max_deliveries < 1:
        fail("limits.max_deliveries", "must be at least 1")
    if lim.ack_wait_s < 1:
        fail("limits.ack_wait_s", "must be at least 1 second")
    if lim.max_inflight < 1:
        fail("limits.max_inflight", "must be at least 1")
    if lim.offload_bytes is not None and lim.offload_bytes < 1024:
        fail("limits.offload_bytes", "must be at least 1024 (or null: never offload)")
    abort = lim.abort_on_failures
    if isinstance(abort, int) and abort != 0:
        fail("limits.abort_on_failures", "give {first: N, share: S}, or 0 or null to never stop")
    if isinstance(abort, AbortOnFailures):
        if abort.first < 0:
            fail("limits.abort_on_failures.first", "must be at least 0 (0: never stop)")
        if not 0 < abort.share <= 1:
            fail("limits.abort_on_failures.share", f"must be in (0, 1], got {abort.share}")
    for rname, res in spec.resources.llm.items():
        if res.max_tokens < 1:
            fail(f"resources.llm.{rname}.max_tokens", "must be at least 1")
    for rname, sbx in spec.resources.sandbox.items():
        where = f"resources.sandbox.{rname}"
        if not NAME_RE.match(rname):
            fail(where, "resource names must be 1-64 letters, digits, '_' or '-'")
        for field in ("pool", "memory_mb", "cpu_s"):
            if getattr(sbx, field) < 1:
                fail(f"{where}.{field}", "must be at least 1")
        for field in ("ttl_s", "timeout_s", "acquire_timeout_s"):
            if getattr(sbx, field) <= 0:
                fail(f"{where}.{field}", "must be positive")
        if sbx.max_restarts < 0:
            fail(f"{where}.max_restarts", "must be at least 0")
    _check_figures(spec.summary, spec.path)


_FIELD_RE = re.compile(r"^[^.\s]+(\.[^.\s]+)*$")


def _check_figures(figures: list[Figure], path: str) -> None:
    def fail(field: str, msg: str) -> NoReturn:
        raise ConfigError(f"{path}: {field}: {msg}")

    seen: dict[str, str] = {}  # label -> kind, of the figures before this one
    for i, fig in enumerate(figures):
        where = f"summary[{i}]"
        kinds = [k for k in FIGURE_KINDS if getattr(fig, k) is not None]
        if len(kinds) != 1:
            fail(where, f"give exactly one of {', '.join(FIGURE_KINDS)} (got "
                        f"{', '.join(kinds) or 'none'})")
        kind = kinds[0]
        if not fig.label.strip():
            fail(f"{where}.label", "must not be empty")
        if fig.label in seen:
            fail(f"{where}.label", f"{fig.label!r} is the label of an earlier figure")
        if fig.equals is not None and kind not in ("rate", "count"):
            fail(f"{where}.equals", f"only for rate and count, not {kind}")
        if fig.ratio is not None:
            if len(fig.ratio) != 2:
                fail(f"{where}.ratio", "give two labels of earlier figures: [A, B] for A / B")
            for j, label in enumerate(fig.ratio):
                if seen.get(label) in (None, "counts"):
                    fail(f"{where}.ratio[{j}]", f"{label!r} is not the label of an earlier "
                         "figure with one number (mean, rate, count, distinct or ratio)")
        else:
            field = str(getattr(fig, kind))
            if not _FIELD_RE.match(field):
                fail(f"{where}.{kind}", f"{field!r} is not a dotted path (like result.reward)")
            root = field.split(".", 1)[0]
            if root not in ROW_FIELDS:
                fail(f"{where}.{kind}", f"{field!r} does not start with a row field (one of "
                     f"{', '.join(ROW_FIELDS)}; an agent's state is under result.)")
        seen[fig.label] = kind
