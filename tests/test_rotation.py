"""Rotation of owned keys with a check-and-set lock, in-process against the real server.

Races are made real: a second writer (the root client) writes to the server between two of
the rotation's own requests, through a KV whose read/write calls a hook afterwards.
"""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest

from vaultsync import rotation
from vaultsync.config import RotateSpec
from vaultsync.errors import ConfigError, Conflict
from vaultsync.vault import KV

NOW = 1_800_000_000.0
SPEC = RotateSpec(key="SESSION", generator="hex", length=16, every=3600)


class RacedKV(KV):
    """A real KV client that runs ``hook(path)`` right after a read or write of ``path``."""

    def __init__(self, *args, after_read: dict[str, Callable[[], None]] | None = None,
                 after_write: dict[str, Callable[[], None]] | None = None) -> None:
        super().__init__(*args)
        self.after_read, self.after_write = dict(after_read or {}), dict(after_write or {})

    def read(self, path):
        result = super().read(path)
        if hook := self.after_read.pop(path, None):
            hook()
        return result

    def write(self, path, data, *, cas=None):
        result = super().write(path, data, cas=cas)
        if hook := self.after_write.pop(path, None):
            hook()
        return result


@pytest.fixture
def kv(vault_server, kv2) -> KV:
    client = KV(vault_server.client(vault_server.token), kv2, 2)
    client.write("compose/api", {"STATIC": "s", "SESSION": "old"})
    return client


def lock_doc(kv: KV) -> dict:
    return kv.read(rotation.lock_path("api", "SESSION")).data


def test_generators_give_the_asked_size_and_alphabet():
    hexed = rotation.generate(RotateSpec("K", "hex", 16))
    assert len(hexed) == 32 and set(hexed) <= set(string.hexdigits.lower())
    b64 = rotation.generate(RotateSpec("K", "base64url", 24))
    assert len(b64) == 32 and set(b64) <= set(string.ascii_letters + string.digits + "-_")
    alnum = rotation.generate(RotateSpec("K", "alphanumeric", 40))
    assert len(alnum) == 40 and set(alnum) <= set(string.ascii_letters + string.digits)
    assert len({rotation.generate(RotateSpec("K", g, 12)) for g in ("hex", "base64url", "alphanumeric") for _ in range(5)}) == 15
    with pytest.raises(ValueError, match="at least 8"):
        rotation.generate(RotateSpec("K", "hex", 7))
    assert len(rotation.generate(RotateSpec("K", "alphanumeric", 8))) == 8


def test_rotates_when_due_keeps_other_keys_and_releases_the_lock(kv):
    result = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="a", now=NOW, lock_ttl=30)
    assert result == rotation.RotationResult("rotated", version=2, next_due=NOW + 3600)
    data = kv.read("compose/api").data
    assert data["STATIC"] == "s" and data["SESSION"] != "old" and len(data["SESSION"]) == 32
    assert lock_doc(kv) == {"holder": "", "expires": 0, "last_rotated": NOW}
    # Not due again before `every` has passed, whoever asks.
    early = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="b", now=NOW + 3599, lock_ttl=30)
    assert early == rotation.RotationResult("not_due", next_due=NOW + 3600)
    assert kv.read("compose/api").version == 2
    due = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="b", now=NOW + 3600, lock_ttl=30)
    assert due.status == "rotated" and due.version == 3 and lock_doc(kv)["last_rotated"] == NOW + 3600


def test_a_live_lock_of_another_holder_blocks_until_it_expires(kv):
    kv.write(rotation.lock_path("api", "SESSION"), {"holder": "crashed", "expires": NOW + 30, "last_rotated": 0})
    blocked = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="a", now=NOW + 29.5, lock_ttl=30)
    assert blocked == rotation.RotationResult("locked", next_due=NOW + 30)
    assert kv.read("compose/api").data["SESSION"] == "old"
    # Its own lock does not block the holder; a crashed holder's lock expires.
    mine = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="crashed", now=NOW, lock_ttl=30)
    assert mine.status == "rotated"
    kv.write(rotation.lock_path("api", "SESSION"), {"holder": "crashed", "expires": NOW + 30, "last_rotated": 0})
    after = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="a", now=NOW + 30, lock_ttl=30)
    assert after.status == "rotated" and lock_doc(kv) == {"holder": "", "expires": 0, "last_rotated": NOW + 30}


def test_losing_the_race_for_the_lock_rotates_nothing(kv, root, kv2):
    path = rotation.lock_path("api", "SESSION")
    raced = RacedKV(kv.client, kv2, 2, after_read={path: lambda: kv.write(path, {"holder": "b", "expires": NOW + 30})})
    result = rotation.rotate_if_due(raced, "api", "compose/api", SPEC, holder="a", now=NOW, lock_ttl=10)
    assert result == rotation.RotationResult("locked", next_due=NOW + 10)
    assert kv.read("compose/api").data["SESSION"] == "old" and lock_doc(kv)["holder"] == "b"


def test_a_failed_rotation_releases_the_lock_and_keeps_the_last_rotation_time(kv, kv2):
    kv.write(rotation.lock_path("api", "SESSION"), {"holder": "", "expires": 0, "last_rotated": NOW - 7200})
    theirs = {"STATIC": "changed by someone", "SESSION": "old"}
    raced = RacedKV(kv.client, kv2, 2, after_read={"compose/api": lambda: kv.write("compose/api", theirs)})
    with pytest.raises(Conflict):
        rotation.rotate_if_due(raced, "api", "compose/api", SPEC, holder="a", now=NOW, lock_ttl=30)
    assert kv.read("compose/api").data == theirs  # check-and-set kept their write
    assert lock_doc(kv) == {"holder": "", "expires": 0, "last_rotated": NOW - 7200}
    retry = rotation.rotate_if_due(kv, "api", "compose/api", SPEC, holder="a", now=NOW + 1, lock_ttl=30)
    assert retry.status == "rotated" and kv.read("compose/api").data["STATIC"] == "changed by someone"


def test_a_lock_taken_over_after_the_rotation_is_left_to_its_new_holder(kv, kv2):
    path = rotation.lock_path("api", "SESSION")
    takeover = {"holder": "b", "expires": NOW + 99, "last_rotated": 0}
    raced = RacedKV(kv.client, kv2, 2, after_write={"compose/api": lambda: kv.write(path, takeover)})
    result = rotation.rotate_if_due(raced, "api", "compose/api", SPEC, holder="a", now=NOW, lock_ttl=30)
    assert result.status == "rotated" and kv.read("compose/api").data["SESSION"] != "old"
    assert lock_doc(kv) == takeover


def test_kv1_cannot_rotate(vault_server, kv1):
    with pytest.raises(ConfigError, match="needs KV v2"):
        rotation.rotate_if_due(KV(vault_server.client(vault_server.token), kv1, 1), "api", "compose/api", SPEC,
                               holder="a", now=NOW, lock_ttl=30)
