"""Run Alembic programmatically (CLI, `finetune up`, tests) against a given URL."""

from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config that works from any working directory and installed location."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision`; creates the SQLite folder when needed."""
    if database_url.startswith("sqlite:///"):
        Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(database_url), revision)


@lru_cache(maxsize=1)
def _revisions() -> tuple[frozenset[str], frozenset[str]]:
    """This code's migration heads, and every revision it knows."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return frozenset(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


def schema_behind(current: set[str]) -> str | None:
    """Why a database at the `current` Alembic revisions cannot serve this code, or None.

    A revision this code does not know is a newer one (a deploy migrated before replacing
    this replica). Migrations keep running code working, so that database still serves:
    calling it unready would take every old replica out of rotation before a new one is up.
    """
    heads, known = _revisions()
    if not current:
        return "no schema: run `finetune db upgrade`"
    if current == heads or not current <= known:
        return None
    return (
        f"schema at {', '.join(sorted(current))}, this code needs {', '.join(sorted(heads))}:"
        " run `finetune db upgrade`"
    )
