"""Dashboard users on both catalog backends: argon2id hashes, sign-in, roles, disabling, and the
errors a caller can tell apart.

Most tests use a cheap PasswordHasher (argon2id with tiny parameters) so they run fast; one test
checks the default hasher's parameters and what it stores."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher, Type

from cloud_selector.catalog import Catalog
from cloud_selector.schema import users
from cloud_selector.users import UnknownUser, UserError, UserExists, UserStore, WeakPassword

PASSWORD = "correct horse battery"


def cheap_hasher(time_cost: int = 1) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=8, parallelism=1, type=Type.ID)


@pytest.fixture
def catalog(catalog_url):
    c = Catalog.open(catalog_url)
    yield c
    c.close()


@pytest.fixture
def store(catalog):
    return UserStore(catalog, cheap_hasher())


def stored_hash(catalog: Catalog, name: str) -> str:
    with catalog.engine.connect() as conn:
        return conn.execute(sa.select(users.c.password_hash).where(users.c.name == name)).scalar_one()


def test_add_stores_an_argon2id_hash_never_the_password(catalog):
    store = UserStore(catalog)  # the default hasher: RFC 9106 low-memory argon2id
    user = store.add("ana", PASSWORD, "admin")
    assert (user.name, user.role, user.disabled_ms, user.disabled) == ("ana", "admin", None, False)
    assert user.created_ms > 0
    stored = stored_hash(catalog, "ana")
    assert stored.startswith("$argon2id$") and "m=65536,t=3,p=4" in stored and PASSWORD not in stored
    assert PASSWORD not in repr(user) and stored not in repr(user)
    assert store.authenticate("ana", PASSWORD) == user


def test_wrong_password_and_unknown_user_are_refused(store):
    store.add("ana", PASSWORD, "labeler")
    assert store.authenticate("ana", PASSWORD + "!") is None
    assert store.authenticate("ana", "") is None
    assert store.authenticate("nobody", PASSWORD) is None
    assert store.authenticate("not a valid name", PASSWORD) is None
    assert store.authenticate("ana", PASSWORD).name == "ana"


def test_disabled_users_are_refused_and_keep_their_name(store):
    store.add("ben", PASSWORD, "reviewer")
    first = store.disable("ben")
    assert first.disabled and first.disabled_ms is not None
    assert store.authenticate("ben", PASSWORD) is None
    assert store.disable("ben").disabled_ms == first.disabled_ms  # the first time is kept
    with pytest.raises(UserExists, match="ben"):
        store.add("ben", "another long password", "admin")
    assert not store.enable("ben").disabled
    assert store.authenticate("ben", PASSWORD).name == "ben"


@pytest.mark.parametrize("password", ["", "short", "123456789"])
def test_weak_passwords_are_refused(store, password):
    with pytest.raises(WeakPassword, match="at least 10 characters"):
        store.add("cat", password, "reviewer")
    assert store.get("cat") is None
    store.add("cat", "0123456789", "reviewer")  # ten is enough
    with pytest.raises(WeakPassword):
        store.set_password("cat", password)
    with pytest.raises(UserError, match="at most 1024"):
        store.set_password("cat", "x" * 1025)


def test_duplicate_names_raise_user_exists(store):
    store.add("dan", PASSWORD, "reviewer")
    with pytest.raises(UserExists, match="'dan' already exists"):
        store.add("dan", PASSWORD, "admin")
    assert store.get("dan").role == "reviewer"


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "slash/name", "ünï", "semi;colon"])
def test_bad_names_are_refused(store, name):
    with pytest.raises(UserError, match="1-64 of"):
        store.add(name, PASSWORD, "reviewer")


def test_roles_are_checked_and_changed(store):
    with pytest.raises(UserError, match="reviewer, labeler, admin"):
        store.add("eve", PASSWORD, "root")
    store.add("eve", PASSWORD, "reviewer")
    assert store.set_role("eve", "labeler").role == "labeler"
    with pytest.raises(UserError, match="role"):
        store.set_role("eve", "owner")
    assert store.get("eve").role == "labeler"


def test_unknown_users_raise_unknown_user(store):
    for change in (lambda: store.set_role("ghost", "admin"), lambda: store.disable("ghost"),
                   lambda: store.enable("ghost"), lambda: store.set_password("ghost", PASSWORD)):
        with pytest.raises(UnknownUser, match="ghost"):
            change()
    assert issubclass(UnknownUser, LookupError) and issubclass(UserError, ValueError)
    assert store.get("ghost") is None


def test_set_password_replaces_the_old_one(catalog, store):
    store.add("fay", PASSWORD, "labeler")
    before = stored_hash(catalog, "fay")
    user = store.set_password("fay", "a different passphrase")
    assert user.password_hash != before
    assert store.authenticate("fay", PASSWORD) is None
    assert store.authenticate("fay", "a different passphrase").password_hash == user.password_hash


def test_a_hash_made_with_other_parameters_is_replaced_at_sign_in(catalog):
    UserStore(catalog, cheap_hasher(time_cost=1)).add("gil", PASSWORD, "admin")
    old = stored_hash(catalog, "gil")
    stronger = UserStore(catalog, cheap_hasher(time_cost=2))
    assert stronger.authenticate("gil", "wrong password!") is None
    assert stored_hash(catalog, "gil") == old  # a failed sign-in changes nothing
    user = stronger.authenticate("gil", PASSWORD)
    assert user is not None and user.password_hash == stored_hash(catalog, "gil") != old
    assert "t=2" in user.password_hash and not stronger.hasher.check_needs_rehash(user.password_hash)
    assert stronger.authenticate("gil", PASSWORD) == user  # verified and not rehashed again


def test_list_is_by_name_and_survives_reopening(catalog_url, store):
    for name, role in (("zed", "admin"), ("amy", "reviewer"), ("moe", "labeler")):
        store.add(name, PASSWORD, role)
    store.disable("moe")
    reopened = Catalog.open(catalog_url)
    try:
        listed = UserStore(reopened, cheap_hasher()).list()
    finally:
        reopened.close()
    assert [(u.name, u.role, u.disabled) for u in listed] == [
        ("amy", "reviewer", False), ("moe", "labeler", True), ("zed", "admin", False)]
