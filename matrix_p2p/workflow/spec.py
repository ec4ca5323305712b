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
from typing import Any, Literal, TypeVar

import msgspec
import yaml

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.refs import import_ref

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_T = TypeVar("_T")
REF_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Spec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    pass


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# request fields the runtime or a named setting owns: `extra_body` may not set them
RESERVED_BODY_KEYS = ("messages", "prompt", "model", "stream", "max_tokens", "temperature",
                      "top_p", "stop", "seed")


class LLMResource(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    endpoints: list[str] = []
    endpoints_file: str | None = None
    # model settings (each overridable per role by `roles.<r>.llm_settings`; an agent's
    # own `ctx.chat(...)` arguments win over both)
    model: str | None = None  # None: the first model of each endpoint's /v1/models
    # the name of an environment variable holding the API key (sent as a bearer token);
    # None: OPENAI_API_KEY when it is set
    api_key_env: str | None = None
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float | None = None  # None: the server's default (left out of the request)
    stop: str | list[str] | None = None
    seed: int | None = None
    extra_body: dict[str, Any] = {}  # merged into every request body (vLLM's extras)
    timeout_s: float = 120.0
    max_retries: int = 4
    initial_limit: int = 32
    max_limit: int = 2048
    sticky: bool = True
    # answer identical requests from the store's response cache (llm/cache.py; off by
    # default: wrong for temperature > 0 without a seed, which then gets one answer forever)
    cache: bool = False
    # price per 1,000 tokens, in the currency of your choice: `run`'s summary shows the cost
    price_per_1k_prompt: float | None = None
    price_per_1k_completion: float | None = None


class LLMSettings(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``roles.<r>.llm_settings``: the role's own model settings over its LLM resource's
    (null: the resource's; ``extra_body`` is merged over the resource's)."""

    model: str | None = None
    api_key_env: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    extra_body: dict[str, Any] = {}

    def over(self, res: LLMResource) -> LLMResource:
        """``res`` with these settings on top."""
        changes: dict[str, Any] = {
            f: v for f in self.__struct_fields__ if f != "extra_body"
            and (v := getattr(self, f)) is not None
        }
        if self.extra_body:
            changes["extra_body"] = {**res.extra_body, **self.extra_body}
        return msgspec.structs.replace(res, **changes) if changes else res


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
    llm_settings: LLMSettings | None = None  # over the `llm` resource's model settings
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


TEXT_KINDS = ("role_system", "role_prompt", "text", "field", "call")


class TextSource(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where a text of an exported conversation comes from: exactly one of these."""

    role_system: str | None = None  # that role's `system:`
    role_prompt: str | None = None  # that role's `prompt:`
    text: str | None = None  # this text
    field: str | None = None  # a dotted path into the row (input.question, result.answer)
    call: str | None = None  # module:function, given the row's input if it takes an argument

    @property
    def kind(self) -> str:
        return next(k for k in TEXT_KINDS if getattr(self, k) is not None)


class ExportSpec(_Spec, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How a row becomes a training conversation (``matrix_p2p/export/``, ``export``)."""

    assistant: str | None = None  # the role whose turns are the assistant's messages
    user: list[str] = []  # roles whose turns are user messages; other roles' are left out
    system: TextSource | None = None  # the system message
    greeting: TextSource | None = None  # an assistant message before the prompt
    prompt: TextSource | None = None  # the first user message
    response: TextSource | None = None  # instead of `assistant`: one answer (single turn)
    tools: str | None = None  # module:function returning the tools' OpenAI schemas
    tool_role: str = "tool"  # turns of this role are tool results (`role: tool` messages)


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
    export: ExportSpec | None = None  # its rows as training conversations (`export`)
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
        """The model settings ``role`` calls with: its LLM resource under its own
        ``llm_settings``; None for a role without an LLM."""
        spec = self.roles[role]
        if spec.llm is None:
            return None
        res = self.resources.llm.get(spec.llm, LLMResource())
        return spec.llm_settings.over(res) if spec.llm_settings is not None else res


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
    from matrix_p2p.workflow.checks import check  # the rules between fields; imports this module

    check(spec)
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
