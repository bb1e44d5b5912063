"""API keys: `ft_<prefix>_<secret>`, shown once, stored as SHA-256, compared in constant time.

The key carries 256 bits of randomness, so a fast hash is enough: there is nothing to brute
force that a slow password hash would protect.
"""

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.core.ids import new_id
from app.core.models import ApiKey, Tenant, utcnow

LAST_USED_RESOLUTION = timedelta(minutes=1)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[str, Tenant]:
    """A new key for `tenant_name` (created if new); the caller shows it once and commits."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=new_id("tn"), name=tenant_name)
        session.add(tenant)
        session.flush()
    prefix = secrets.token_hex(6)
    key = f"ft_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=new_id("key"), tenant_id=tenant.id, prefix=prefix, key_hash=_hash(key)))
    return key, tenant


def tenant_for_key(session: Session, key: str) -> str | None:
    """The tenant id of a valid, unrevoked key, else None.

    Leaves no transaction open: it runs before a request's own work, which may take minutes
    without touching the database (an upload received and checked, an export made), and an
    open read would hold a pooled connection idle in a transaction all along.
    """
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "ft":
        return None
    try:
        row = session.scalar(
            select(ApiKey).where(ApiKey.prefix == parts[1], ApiKey.revoked_at.is_(None))
        )
        if row is None or not hmac.compare_digest(row.key_hash, _hash(key)):
            return None
        tenant_id, now = row.tenant_id, utcnow()
        # A write per request would contend with the workers' writes (SQLite has one writer):
        # last use is recorded to the minute.
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            session.commit()
        return tenant_id
    finally:
        if session.in_transaction():
            session.rollback()
