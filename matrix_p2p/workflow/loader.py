"""Finding and reading workflow files: a path, or the name of a bundled workflow."""

from __future__ import annotations

from pathlib import Path

from matrix_p2p.errors import ConfigError
from matrix_p2p.workflow.spec import WorkflowSpec, parse


def bundled_dir() -> Path:
    """Where the bundled workflows live (the top-level ``workflows/`` folder, installed
    under the import name ``matrix_p2p_workflows``)."""
    import matrix_p2p_workflows

    return Path(matrix_p2p_workflows.__file__).resolve().parent


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


def resolve_path(ref: str) -> Path:
    """A workflow reference is a path, or the name of a bundled workflow (``coral``)."""
    p = Path(ref)
    if p.exists():
        return p
    if not p.suffix and "/" not in ref:
        bundled = bundled_dir() / f"{ref}.yaml"
        if bundled.exists():
            return bundled
    names = ", ".join(bundled_names())
    raise ConfigError(f"{ref}: no such workflow file (give a path or a bundled name: {names})")


def load(ref: str) -> WorkflowSpec:
    """Read and validate a workflow file. Raises ``ConfigError``."""
    path = resolve_path(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse(text, path=str(path))
