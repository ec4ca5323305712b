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
from collections.abc import Callable
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
    for rname, res in spec.resources.llm.items():
        _check_model_settings(res, f"resources.llm.{rname}", fail)
    for name, role in spec.roles.items():
        if role.llm_settings is not None:
            if role.llm is None:
                fail(f"roles.{name}.llm_settings", "the role has no LLM (llm: null)")
            _check_model_settings(role.llm_settings, f"roles.{name}.llm_settings", fail)
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


def _check_model_settings(s: LLMResource | LLMSettings, where: str,
                          fail: Callable[[str, str], None]) -> None:
    if s.max_tokens is not None and s.max_tokens < 1:
        fail(f"{where}.max_tokens", "must be at least 1")
    if s.temperature is not None and not s.temperature >= 0:  # NaN too
        fail(f"{where}.temperature", f"must be at least 0, got {s.temperature}")
    if s.top_p is not None and not 0 < s.top_p <= 1:
        fail(f"{where}.top_p", f"must be in (0, 1], got {s.top_p}")
    if s.model is not None and not s.model.strip():
        fail(f"{where}.model", "must not be empty (leave it out: the server's first model)")
    # never echo the value: a key pasted here by mistake must not reach a log
    if s.api_key_env is not None and not ENV_NAME_RE.match(s.api_key_env):
        fail(f"{where}.api_key_env", "must be the name of an environment variable (letters, "
             "digits, '_'), not the key itself")
    stops = [s.stop] if isinstance(s.stop, str) else s.stop or []
    for i, stop in enumerate(stops):
        if not stop:
            fail(f"{where}.stop" + (f"[{i}]" if isinstance(s.stop, list) else ""),
                 "must not be an empty string")
    for key in s.extra_body:
        if key in RESERVED_BODY_KEYS:
            how = (f"set `{key}` itself, not in extra_body" if hasattr(s, key)
                   else "the runtime sets it")
            fail(f"{where}.extra_body.{key}", how)
