"""``nats-users``: the NATS accounts/users config for workflows, one user per role."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from matrix_p2p.cli import common
from matrix_p2p.errors import ConfigError


def add_parsers(sub: Any) -> None:
    from matrix_p2p.permissions import ACCOUNT, FLEET_BUCKET

    u = common.add_command(
        sub, "nats-users", "write the NATS accounts/users config: one user per role (mode 0600)",
        "Write a nats-server `accounts` block for the given workflows: per role a user that\n"
        "may consume its own subject and publish only where its routing can send (plus the\n"
        "results and dead-letter subjects), per workflow a source and a sink user, and\n"
        "`admin`. Passwords come from MX_NATS_PASSWORD_<USER> (e.g.\n"
        "MX_NATS_PASSWORD_CORAL_ROLE_JUDGE) or are generated; --env-dir writes each user's\n"
        "MX_NATS_USER/MX_NATS_PASSWORD as an env file for the systemd units.\n\n"
        "example: python -m matrix_p2p nats-users coral --out /etc/nats/matrix-users.conf "
        "--env-dir /etc/matrix-p2p")
    u.add_argument("workflows", nargs="+", metavar="WORKFLOW", help="workflow files or bundled names")
    u.add_argument("--out", required=True, metavar="PATH",
                   help="config file to write (mode 0600; include it in the nats-server config)")
    u.add_argument("--account", default=ACCOUNT, help=f"account name (default {ACCOUNT})")
    u.add_argument("--no-manage-streams", action="store_true",
                   help="users may not create or update streams and consumers (create them "
                        "once as admin)")
    u.add_argument("--fleet-bucket", default=FLEET_BUCKET, metavar="NAME",
                   help=f"the LLM fleet key-value bucket (default {FLEET_BUCKET})")
    u.add_argument("--env-dir", metavar="DIR",
                   help="also write worker-<role>.env, source-<wf>.env, sink-<wf>.env and "
                        "admin.env here (mode 0600)")
    common.add_common(u)
    u.set_defaults(fn=cmd_nats_users)


def write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` with mode 0600 from the first byte (never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask; make it exact
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def env_files(users: list[Any], passwords: dict[str, str]) -> dict[str, str]:
    """File name -> contents: the units read ``worker-%i.env`` (%i: the role)."""
    files: dict[str, str] = {}
    for user in users:
        wf, _, rest = user.name.partition(".")
        if rest.startswith("role."):
            name = f"worker-{rest[len('role.'):]}.env"
        elif rest in ("source", "sink"):
            name = f"{rest}-{wf}.env"
        else:
            name = f"{user.name}.env"
        if name in files:
            raise ConfigError(f"--env-dir: two workflows have a role named like {name!r}; "
                              "write one workflow's users at a time")
        files[name] = f"MX_NATS_USER={user.name}\nMX_NATS_PASSWORD={passwords[user.name]}\n"
    return files


def cmd_nats_users(args: argparse.Namespace) -> int:
    from matrix_p2p.permissions import all_users, nats_config, passwords_for
    from matrix_p2p.workflow.loader import load

    specs = [load(ref) for ref in args.workflows]
    users = all_users(specs, manage_streams=not args.no_manage_streams,
                      fleet_bucket=args.fleet_bucket)
    passwords = passwords_for(users)
    text = nats_config(users, passwords, account=args.account)
    files = env_files(users, passwords) if args.env_dir else {}
    out = Path(args.out)
    try:
        write_private(out, text)
        for name, body in files.items():
            write_private(Path(args.env_dir) / name, body)
    except OSError as exc:
        raise ConfigError(f"nats-users: cannot write {exc.filename}: {exc.strerror}") from None
    print(f"wrote {len(users)} NATS users to {out} (mode 0600)"
          + (f" and {len(files)} env files to {args.env_dir}" if files else ""), file=sys.stderr)
    return 0
