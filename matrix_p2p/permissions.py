"""NATS users for workflows: each role may consume its own subject and publish only where
its routing can send. Pure: specs (and passwords) in, nats-server config text out.

One account (``MATRIX``) holds every workflow's users: the LLM fleet's
key-value bucket is shared by all workers on a broker, and subject
permissions already keep workflows apart (a role's user names only its own
workflow's subjects, streams and consumers). Users:

- ``<workflow>.role.<role>``: fetch and ack on its own durable consumer,
  publish to the task subjects of the roles its routing can forward to, the
  done/failed subjects and the dead-letter subject; the LLM fleet bucket if
  the role calls an LLM.
- ``<workflow>.source``: the entry role's subject and the submitted-ids bucket.
- ``<workflow>.sink``: its own consumers on the results stream, the dead-letter subject.
- ``admin``: everything (``status``, ``dlq`` replay, stream set-up, ``nats`` CLI).

Every user may subscribe to ``_INBOX.>`` only: JetStream answers API calls,
PubAcks and fetched messages there. Inbox names are random (nuid); a
per-user inbox prefix would close even that, once the bus sets one.

``manage_streams`` (default True) also lets each user create/update its own
workflow's streams and consumers, because today every worker, source and
sink runs the idempotent set-up on start. With False, only ``admin`` can
(the stricter set-up: create the streams once as admin).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from matrix_p2p.errors import ConfigError
from matrix_p2p.runtime.topology import Names
from matrix_p2p.workflow.spec import CycleRouting, WorkflowSpec

ADMIN = "admin"
ACCOUNT = "MATRIX"
FLEET_BUCKET = "MX_LLM_FLEET"  # = matrix_p2p.bus.fleet_kv.FLEET_BUCKET (a test checks they agree)
INBOX = "_INBOX.>"
_SAFE_PASSWORD = re.compile(r"[!#-\[\]-~]+")  # printable ASCII except space, double quote, backslash
API = "$JS.API"


class User(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    comment: str = ""


def next_roles(spec: WorkflowSpec) -> tuple[dict[str, list[str]], bool]:
    """Role -> the roles it can forward to, and whether the routing could be analysed.

    ``cycle``: the next role in the cycle (a role outside the cycle forwards
    nowhere: ``decide`` fails its tasks). ``python``: a router's code cannot
    be analysed, so every role may forward to every role.
    """
    if isinstance(spec.routing, CycleRouting):
        cycle = spec.routing.roles
        nxt: dict[str, list[str]] = {r: [] for r in spec.roles} | {
            r: [cycle[(i + 1) % len(cycle)]] for i, r in enumerate(cycle)}
        return nxt, True
    return {r: list(spec.roles) for r in spec.roles}, False


def _kv(bucket: str, *, create: bool) -> list[str]:
    """A key-value bucket: open (stream info), put/create, get (direct or not), watch."""
    stream = f"KV_{bucket}"
    subjects = [f"$KV.{bucket}.>", f"{API}.STREAM.INFO.{stream}",
                f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>",
                f"{API}.STREAM.MSG.GET.{stream}"]
    if create:
        subjects.append(f"{API}.STREAM.CREATE.{stream}")
    return subjects


def _watch(bucket: str) -> list[str]:
    """``watchall``: an ordered push consumer on the bucket's stream, its flow control replies."""
    stream = f"KV_{bucket}"
    return [f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.CREATE.{stream}.>",
            f"{API}.CONSUMER.INFO.{stream}.>", f"{API}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>"]


def _streams(names: Names) -> list[str]:
    return [f"{API}.STREAM.{op}.{s}" for s in (names.tasks_stream, names.results_stream, names.dlq_stream)
            for op in ("CREATE", "UPDATE", "INFO")]


def _read_stream(stream: str) -> list[str]:
    """Read stored messages by sequence (``Bus.next_msg``, ``stream_bounds``)."""
    return [f"{API}.STREAM.INFO.{stream}", f"{API}.STREAM.MSG.GET.{stream}"]


def _role_consumer(names: Names, role: str, *, create: bool) -> list[str]:
    """Fetch, ack (ack/nak/term/in_progress reply to ``$JS.ACK...``) and read one role's
    consumer; creating it names its filter in the subject, so the filter is pinned too."""
    stream = names.tasks_stream
    subjects = [f"{API}.CONSUMER.MSG.NEXT.{stream}.{role}", f"$JS.ACK.{stream}.{role}.>",
                f"{API}.CONSUMER.INFO.{stream}.{role}"]
    if create:
        subjects.append(f"{API}.CONSUMER.CREATE.{stream}.{role}.{names.task(role)}")
    return subjects


def workflow_users(spec: WorkflowSpec, *, manage_streams: bool = True,
                   fleet_bucket: str = FLEET_BUCKET) -> list[User]:
    """The role, source and sink users of one workflow (no passwords: see ``nats_config``)."""
    names = Names.of(spec)
    wf = spec.name
    setup = _streams(names) if manage_streams else []
    results = [names.done, names.failed, names.dlq]
    reach, analysed = next_roles(spec)
    how = "cycle routing" if analysed else (
        "python routing cannot be analysed: every role of the workflow is allowed")
    users = []
    for role in spec.roles:
        targets = reach[role]
        # the liveness check (liveness/heal.py) reads the task stream's stored messages and
        # deletes a stuck copy once its re-run is acked
        pub = [*_role_consumer(names, role, create=manage_streams), *setup,
               *(names.task(t) for t in targets), *results, *_read_stream(names.tasks_stream),
               f"{API}.STREAM.MSG.DELETE.{names.tasks_stream}"]
        if spec.roles[role].llm is not None:
            pub += [*_kv(fleet_bucket, create=True), *_watch(fleet_bucket)]
        llm_res = spec.llm_for(role)
        if llm_res is not None and llm_res.cache:  # the response cache (llm/cache.py): get and create
            pub += _kv(names.llm_cache_bucket, create=True)
        sends = ", ".join(targets) if targets else "no role"
        users.append(User(name=f"{wf}.role.{role}", publish=tuple(pub), subscribe=(INBOX,),
                          comment=f"workflow {wf}, role {role}: consumes {names.task(role)}; "
                                  f"forwards to {sends} ({how})"))

    if isinstance(spec.routing, CycleRouting):
        entries, entry_note = [spec.routing.roles[0]], "the entry role"
    else:
        entries, entry_note = list(spec.roles), "every role (python routing: entry not analysed)"
    # the source also sets up every role's consumer (ensure_workflow) and reads the
    # task stream's size for its admission window
    # and reads the results stream back for `--retry-failed` (runtime/attempts.py)
    source_pub = [*(names.task(r) for r in entries), *_kv(names.submitted_bucket, create=True),
                  f"{API}.STREAM.INFO.{names.tasks_stream}", *_read_stream(names.results_stream)]
    if manage_streams:
        source_pub += setup + [f"{API}.CONSUMER.CREATE.{names.tasks_stream}.{r}.{names.task(r)}"
                               for r in spec.roles]
    users.append(User(name=f"{wf}.source", publish=tuple(dict.fromkeys(source_pub)),
                      subscribe=(INBOX,),
                      comment=f"workflow {wf}, source: submits to {entry_note}"))

    res = names.results_stream
    # any durable name: a sink's durable is derived from its output path
    # it reads stored results back to rebuild its output (runtime/sink_state.py)
    sink_pub = [f"{API}.CONSUMER.MSG.NEXT.{res}.*", f"$JS.ACK.{res}.*.>",
                f"{API}.CONSUMER.INFO.{res}.*", names.dlq, *_read_stream(res), *setup]
    if manage_streams:
        sink_pub.append(f"{API}.CONSUMER.CREATE.{res}.*")
    users.append(User(name=f"{wf}.sink", publish=tuple(dict.fromkeys(sink_pub)), subscribe=(INBOX,),
                      comment=f"workflow {wf}, sink: reads {names.done} and {names.failed}"))
    return users


def admin_user() -> User:
    return User(name=ADMIN, publish=(">",), subscribe=(">",),
                comment="admin: status, dlq, stream set-up, the nats CLI")


def all_users(specs: Sequence[WorkflowSpec], *, manage_streams: bool = True,
              fleet_bucket: str = FLEET_BUCKET) -> list[User]:
    """Every workflow's users and ``admin``; a workflow named twice is a ConfigError."""
    seen: set[str] = set()
    users = []
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(f"workflow {spec.name!r} given twice")
        seen.add(spec.name)
        users += workflow_users(spec, manage_streams=manage_streams, fleet_bucket=fleet_bucket)
    return [*users, admin_user()]


def password_env(user: str) -> str:
    """Where a user's password may come from:
    ``coral.role.judge`` -> ``MX_NATS_PASSWORD_CORAL_ROLE_JUDGE``."""
    return "MX_NATS_PASSWORD_" + re.sub(r"[^A-Za-z0-9]", "_", user).upper()


def passwords_for(users: Iterable[User], env: Mapping[str, str] | None = None,
                  generate: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> dict[str, str]:
    """Each user's password: from ``password_env(name)`` if set, else generated."""
    env = os.environ if env is None else env
    return {u.name: env.get(password_env(u.name)) or generate() for u in users}


def _strings(items: Iterable[str], indent: str) -> str:
    return ",\n".join(indent + json.dumps(s) for s in items)


def nats_config(users: Sequence[User], passwords: Mapping[str, str], *, account: str = ACCOUNT) -> str:
    """The ``accounts`` block for nats-server (include it, or merge by hand).

    The text holds the passwords in plain: the CLI writes it with mode 0600.
    Error handling: a user without a password is a ``ConfigError`` naming it.
    """
    missing = [u.name for u in users if not passwords.get(u.name)]
    if missing:
        raise ConfigError(f"no password for NATS user(s): {', '.join(missing)}")
    for u in users:
        # quotes, backslashes and control characters would need nats-conf escaping rules
        if not _SAFE_PASSWORD.fullmatch(passwords[u.name]):
            raise ConfigError(f"{password_env(u.name)}: the password of NATS user {u.name!r} must be "
                              "printable ASCII without quotes, backslashes or spaces")
    out = [
        "# matrix_p2p: NATS users for workflows, one per role (see matrix_p2p/permissions.py).",
        "# Holds passwords: keep it mode 0600, readable by nats-server only.",
        "accounts {",
        f"  {account} {{",
        "    jetstream: enabled",
        "    users: [",
    ]
    for u in users:
        out += [
            f"      # {u.comment}" if u.comment else "      #",
            f"      {{ user: {json.dumps(u.name)}, password: {json.dumps(passwords[u.name])},",
            "        permissions: {",
            "          publish: { allow: [",
            _strings(u.publish, "            "),
            "          ] }",
            "          subscribe: { allow: [",
            _strings(u.subscribe, "            "),
            "          ] }",
            "        } }",
        ]
    out += ["    ]", "  }", "}"]
    return "\n".join(out) + "\n"
