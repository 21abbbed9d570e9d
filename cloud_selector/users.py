"""People who sign in to the dashboard: names, roles and argon2id password hashes in the catalog.

    store = UserStore(catalog)
    store.add("ana", "a long passphrase", "admin")
    user = store.authenticate("ana", password)     # User, or None (wrong, unknown or disabled)

Roles, each allowed what the one before it is: `reviewer` (browse, tag), `labeler` (label, queue,
reject), `admin` (users, rollouts). The dashboard enforces them; this module only stores them.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, RFC 9106's low-memory
profile unless another hasher is passed in): about 50 ms and 64 MiB per hash, which is the point.
An unknown name is checked against a dummy hash, so that it takes as long as a wrong password
and a stranger cannot probe which names exist by timing. A stored hash made with other
parameters than the hasher's is replaced at the next successful sign-in. Disabled users are
refused; they are kept (with when they were disabled) so a name is never reused by someone else.

Errors:

    UserError (ValueError)      a name, role or password this store refuses (the message says why)
    ├── UserExists              `add` with a name already taken (disabled users' names too)
    ├── UnknownUser             also LookupError: no user of that name
    └── WeakPassword            shorter than MIN_PASSWORD_CHARS
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cloud_selector.catalog import Catalog, now_ms
from cloud_selector.schema import users

__all__ = ["MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "ROLES", "UnknownUser", "User", "UserError", "UserExists",
           "UserStore", "WeakPassword"]

ROLES = ("reviewer", "labeler", "admin")
MIN_PASSWORD_CHARS = 10
MAX_PASSWORD_CHARS = 1024  # hashing cost grows with length; nobody types more
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class UserError(ValueError):
    """A name, role or password the store refuses (module docstring)."""


class UserExists(UserError):
    """The name is taken (ids of disabled users too: names are never reused)."""


class UnknownUser(UserError, LookupError):
    """No user of that name."""


class WeakPassword(UserError):
    """The password is too short."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_ms: int
    disabled_ms: int | None  # None while the user may sign in
    # The argon2 hash (never the password): sessions fingerprint it, so a new password ends them.
    password_hash: str = field(repr=False)

    @property
    def disabled(self) -> bool:
        return self.disabled_ms is not None


class UserStore:
    """The `users` table of one catalog; thread-safe (the catalog's engine pools)."""

    def __init__(self, catalog: Catalog, hasher: PasswordHasher | None = None):
        self.catalog = catalog
        self.hasher = hasher or PasswordHasher()  # argon2id, RFC 9106 low-memory parameters
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> User | None:
        with self.catalog.engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.name == name)).first()
        return _user(row) if row else None

    def list(self) -> list[User]:
        """Every user, disabled ones too, by name."""
        with self.catalog.engine.connect() as conn:
            return [_user(r) for r in conn.execute(sa.select(users).order_by(users.c.name))]

    # ------------------------------------------------------------------ signing in

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if `password` is theirs and they are not disabled, else None (which of the
        three went wrong is not said: the caller shows one message for all)."""
        user = self.get(name) if _NAME.fullmatch(name or "") else None
        if user is None:
            self._verify(self._dummy(), password)  # as slow as a wrong password
            return None
        if not self._verify(user.password_hash, password) or user.disabled:
            return None
        if self.hasher.check_needs_rehash(user.password_hash):
            new_hash = self.hasher.hash(password)
            with self.catalog.engine.begin() as conn:
                conn.execute(users.update().where(users.c.name == name, users.c.password_hash == user.password_hash)
                             .values(password_hash=new_hash))
            return self.get(name)
        return user

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):  # mismatch, or a hash argon2 cannot read
            return False

    def _dummy(self) -> str:
        with self._dummy_lock:
            if self._dummy_hash is None:  # made once, with this hasher's parameters
                self._dummy_hash = self.hasher.hash("not the password of anyone")
            return self._dummy_hash

    # ------------------------------------------------------------------ changing

    def add(self, name: str, password: str, role: str) -> User:
        """Create a user; raises UserExists, WeakPassword or UserError (bad name or role)."""
        _check_name(name)
        _check_role(role)
        password_hash = self._hash(password)
        try:
            with self.catalog.engine.begin() as conn:
                conn.execute(users.insert().values(name=name, password_hash=password_hash, role=role,
                                                   created_ms=now_ms(), disabled_ms=None))
        except sa.exc.IntegrityError:
            raise UserExists(f"user {name!r} already exists (names of disabled users are not reused)") from None
        return self._require(name)

    def set_role(self, name: str, role: str) -> User:
        _check_role(role)
        return self._update(name, role=role)

    def set_password(self, name: str, password: str) -> User:
        """A new password (sessions made with the old one end: see User.password_hash)."""
        return self._update(name, password_hash=self._hash(password))

    def disable(self, name: str) -> User:
        """Refuse the user from now on (already disabled: unchanged, the first time is kept)."""
        user = self._require(name)
        return user if user.disabled else self._update(name, disabled_ms=now_ms())

    def enable(self, name: str) -> User:
        return self._update(name, disabled_ms=None)

    def _update(self, name: str, **values) -> User:
        with self.catalog.engine.begin() as conn:
            if not conn.execute(users.update().where(users.c.name == name).values(**values)).rowcount:
                raise UnknownUser(f"no user {name!r}")
        return self._require(name)

    def _require(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UnknownUser(f"no user {name!r}")
        return user

    def _hash(self, password: str) -> str:
        if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
            raise WeakPassword(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
        if len(password) > MAX_PASSWORD_CHARS:
            raise UserError(f"a password has at most {MAX_PASSWORD_CHARS} characters")
        return self.hasher.hash(password)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"a user name is 1-64 of A-Z a-z 0-9 . _ - (got {str(name)[:80]!r})")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)} (got {str(role)[:40]!r})")


def _user(row) -> User:
    return User(name=row.name, role=row.role, created_ms=row.created_ms, disabled_ms=row.disabled_ms,
                password_hash=row.password_hash)
