"""vaultsync.migrate in-process: grouping files into secrets, the diff, plan and apply against the
real server (check-and-set on new *and* existing secrets, KV v1's re-read), and what the plan shows.
(`tests/test_migrate.py` runs the CLI end to end.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from vaultsync import migrate as M
from vaultsync.config import SourceSpec
from vaultsync.errors import BadInput, Conflict, OutcomeUnknown, Unreachable, VaultError
from vaultsync.vault import KV, Secret

FP = M.Fingerprinter(b"0123456789abcdef")


def env(folder: Path, name: str, text: str) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_service_for_is_the_files_folder(tmp_path):
    assert M.service_for(str(tmp_path / "api" / ".env")) == "api"
    assert M.service_for("/.env") == "default"


def test_targets_group_files_by_service_with_origins(tmp_path):
    api = env(tmp_path, "api/.env", "A=1\n\nB=2\n")
    web = env(tmp_path, "web/prod.env", "C=3\n")
    targets = M.build_targets([SourceSpec(api), SourceSpec(web, service="www")], prefix="compose")
    assert [(t.path, dict(t.data), dict(t.origins)) for t in targets] == [
        ("compose/api", {"A": "1", "B": "2"}, {"A": f"{api}:1", "B": f"{api}:3"}),
        ("compose/www", {"C": "3"}, {"C": f"{web}:1"}),
    ]
    no_prefix = M.build_targets([SourceSpec(api)], prefix="")
    assert [t.path for t in no_prefix] == ["api"]
    explicit = M.build_targets([SourceSpec(api, path="/x//y/")], prefix="compose")
    assert [t.path for t in explicit] == ["x/y"]


def test_split_prefers_the_longest_prefix_and_may_strip_it(tmp_path):
    f = env(tmp_path, "api/.env", "DB_RO_USER=r\nDB_USER=u\nOTHER=o\n")
    split = {"DB_": "db", "DB_RO_": "shared/db-ro"}
    targets = {t.path: dict(t.data) for t in M.build_targets([SourceSpec(f, split=split)], prefix="p")}
    assert targets == {"p/api": {"OTHER": "o"}, "p/db": {"DB_USER": "u"}, "shared/db-ro": {"DB_RO_USER": "r"}}
    stripped = {t.path: dict(t.data) for t in M.build_targets([SourceSpec(f, split=split, strip_prefix=True)], prefix="")}
    assert stripped == {"api": {"OTHER": "o"}, "db": {"USER": "u"}, "shared/db-ro": {"USER": "r"}}
    bare = env(tmp_path, "b/.env", "X=1\nDB_=2\n")
    with pytest.raises(BadInput, match=rf"^{bare}:2: key DB_ is empty once DB_ is stripped$"):
        M.build_targets([SourceSpec(bare, split={"DB_": "db"}, strip_prefix=True)], prefix="")


def test_a_key_set_by_two_files_for_one_secret_is_refused(tmp_path):
    a = env(tmp_path, "a/.env", "X=1\nK=1\n")
    b = env(tmp_path, "b/.env", "K=2\n")
    with pytest.raises(BadInput, match=rf"^{b}:1: K for same is also set at {a}:2$"):
        M.build_targets([SourceSpec(a, service="same"), SourceSpec(b, service="same")], prefix="")
    # Different keys from two files merge into one secret.
    c = env(tmp_path, "c/.env", "Y=3\n")
    (t,) = M.build_targets([SourceSpec(a, service="same"), SourceSpec(c, service="same")], prefix="")
    assert dict(t.data) == {"X": "1", "K": "1", "Y": "3"} and t.origins["Y"] == f"{c}:1"


def test_duplicates_within_a_file_warn_and_the_last_wins(tmp_path):
    f = env(tmp_path, "api/.env", "K=1\nX=2\nK=3\n")
    warnings: list[str] = []
    (t,) = M.build_targets([SourceSpec(f)], prefix="", warn=warnings.append)
    assert dict(t.data) == {"K": "3", "X": "2"} and t.origins["K"] == f"{f}:3"
    assert warnings == [f"{f}:3: duplicate key K (first on line 1); the last one wins"]
    with pytest.raises(BadInput, match="duplicate key K"):
        M.build_targets([SourceSpec(f)], prefix="", strict=True)


def test_paths_equal_once_normalized_are_refused(tmp_path):
    a = env(tmp_path, "a/.env", "A=1\n")
    b = env(tmp_path, "b/.env", "B=1\n")
    with pytest.raises(BadInput, match="^two sources map to the same secret path once '/' are normalized"):
        M.build_targets([SourceSpec(a, path="x/y"), SourceSpec(b, path="x//y")], prefix="")


def test_size_limit_is_exact(tmp_path):
    f = env(tmp_path, "a/.env", "K=" + "v" * 10 + "\n")
    size = len(json.dumps({"K": "v" * 10}).encode())  # 17
    assert M.build_targets([SourceSpec(f)], prefix="", max_secret_bytes=size)
    with pytest.raises(BadInput) as err:
        M.build_targets([SourceSpec(f)], prefix="", max_secret_bytes=size - 1)
    assert str(err.value) == (f"secret a would be {size} bytes, over the {size - 1}-byte limit (KV storage refuses large "
                              "entries); split it with [migrate.sources] split = {...}")


def test_interpolation_is_passed_through(tmp_path, monkeypatch):
    f = env(tmp_path, "a/.env", "A=x\nB=${A}-${HOME_DIR}\n")
    monkeypatch.setenv("HOME_DIR", "h")
    (t,) = M.build_targets([SourceSpec(f)], prefix="", interpolate=True, interpolate_env=["HOME_DIR"])
    assert t.data["B"] == "x-h"
    (t,) = M.build_targets([SourceSpec(f)], prefix="")
    assert t.data["B"] == "${A}-${HOME_DIR}"


def test_style_warnings_name_keys_and_lines_never_values():
    t = M.Target("svc", {"OK": "plain", "NL": "two\nlines", **{f"K{i}": "a\nb" for i in range(7)}},
                 {"NL": "f:1", **{f"K{i}": f"f:{i + 2}" for i in range(7)}})
    lines = M.style_warnings([t])
    assert lines and all(line.startswith("svc: the ") and " style cannot carry " in line for line in lines)
    docker = [line for line in lines if line.startswith("svc: the docker style")]
    multi_line = "value contains a line break; docker --env-file has no multi-line values (use the compose style)"
    assert docker == ["svc: the docker style cannot carry NL (f:1), K0 (f:2), K1 (f:3), K2 (f:4), K3 (f:5) and 3 more: "
                      + multi_line]
    # Up to five keys are all named; the sixth turns into "and 1 more".
    five = M.Target("s", {f"K{i}": "a\nb" for i in range(5)}, {})
    assert f"s: the docker style cannot carry K0 (?), K1 (?), K2 (?), K3 (?), K4 (?): {multi_line}" in M.style_warnings([five])
    six = M.Target("s", {f"K{i}": "a\nb" for i in range(6)}, {})
    assert f"s: the docker style cannot carry K0 (?), K1 (?), K2 (?), K3 (?), K4 (?) and 1 more: {multi_line}" in M.style_warnings([six])
    # One line per reason: two reasons in one style make two lines.
    mixed = [line for line in M.style_warnings([M.Target("s", {"NL": "a\nb", "bad key": "v"}, {})]) if " docker " in line]
    assert len(mixed) == 2 and any(line.endswith(multi_line) for line in mixed)
    assert "two" not in "".join(lines) and "lines" not in "".join(lines).replace("multi-line", "")
    assert M.style_warnings([M.Target("svc", {"OK": "plain"}, {})]) == []
    few = M.style_warnings([M.Target("s", {"NL": "a\nb"}, {})])
    assert any(line.startswith("s: the docker style cannot carry NL (?): ") for line in few)


def test_fingerprints_are_keyed_short_and_stable_within_a_run():
    assert FP("secret") == FP("secret") and len(FP("secret")) == 8 and FP("secret") != FP("secret2")
    assert M.Fingerprinter(b"another-key-0000")("secret") != FP("secret")
    assert M.Fingerprinter()("secret") != M.Fingerprinter()("secret")  # a new key each run
    assert FP({"b": 1, "a": 2}) == FP({"a": 2, "b": 1})  # non-strings by their sorted JSON
    assert FP(1) == FP("1") and FP([1]) == FP("[1]")


def test_diff_statuses_and_merge():
    current = {"same": "1", "changed": "old", "extra": "x"}
    wanted = {"same": "1", "changed": "new", "added": "a"}
    changes, merged = M.diff(current, wanted, prune=False, fp=FP)
    assert changes == [
        M.KeyChange("added", M.ADDED, None, FP("a")),
        M.KeyChange("changed", M.CHANGED, FP("old"), FP("new")),
        M.KeyChange("extra", M.ONLY_IN_VAULT, FP("x"), None),
        M.KeyChange("same", M.UNCHANGED, FP("1"), FP("1")),
    ]
    assert merged == {"same": "1", "changed": "new", "extra": "x", "added": "a"}
    changes, merged = M.diff(current, wanted, prune=True, fp=FP)
    assert [c.status for c in changes] == [M.ADDED, M.CHANGED, M.REMOVED, M.UNCHANGED] and merged == wanted
    assert M.diff(None, {"a": "1"}, prune=False, fp=FP) == ([M.KeyChange("a", M.ADDED, None, FP("1"))], {"a": "1"})


def secret_plan(statuses: list[str]) -> M.SecretPlan:
    return M.SecretPlan(M.Target("p", {}, {}), Secret("p", None), tuple(M.KeyChange(f"k{i}", s) for i, s in enumerate(statuses)), {})


def test_a_secret_needs_a_write_only_for_added_changed_removed():
    for status in (M.ADDED, M.CHANGED, M.REMOVED):
        assert secret_plan([M.UNCHANGED, status]).needs_write
    assert not secret_plan([M.UNCHANGED, M.ONLY_IN_VAULT]).needs_write and not secret_plan([]).needs_write
    sp = secret_plan([M.ADDED, M.ADDED, M.UNCHANGED])
    assert sp.count(M.ADDED) == 2 and sp.count(M.UNCHANGED) == 1 and sp.count(M.REMOVED) == 0


def test_outcome_exit_codes():
    assert M.Outcome().exit_code == 0
    assert M.Outcome(conflicts=["a"]).exit_code == Conflict.exit_code == 3
    for failing in (dict(failed=[("a", "x")]), dict(unknown=[("a", "x")]), dict(abandoned=["a"])):
        assert M.Outcome(conflicts=["b"], **failing).exit_code == 1  # type: ignore[arg-type]
    assert M.Outcome(failed=[("c", "x")], conflicts=["b"], abandoned=["a"], unknown=[("d", "y")]).not_written == ["a", "b", "c"]


def test_why_not_start():
    assert M.why_not_start(10.0, None, True) is None
    assert M.why_not_start(10.0, 10.5, True) is None
    assert M.why_not_start(10.0, 10.0, True) == "deadline reached"
    assert M.why_not_start(11.0, 10.0, False) == "deadline reached"
    assert M.why_not_start(10.0, None, False) == "the server stopped answering"


def test_plan_and_apply_on_kv2_with_check_and_set(kv2, root):
    kv = KV(root, kv2, 2)
    root.secrets.kv.v2.create_or_update_secret(path="app/old", secret={"A": "1", "EXTRA": "x"}, mount_point=kv2)
    root.secrets.kv.v2.create_or_update_secret(path="app/old", secret={"A": "1", "EXTRA": "x"}, mount_point=kv2)  # version 2
    targets = [M.Target("app/new", {"N": "1"}, {}), M.Target("app/old", {"A": "2"}, {}), M.Target("app/same", {"S": "1"}, {})]
    root.secrets.kv.v2.create_or_update_secret(path="app/same", secret={"S": "1"}, mount_point=kv2)
    p = M.plan(kv, targets, fp=FP)
    assert (p.mount, p.kv_version, p.prune) == (kv2, 2, False)
    assert [(sp.target.path, sp.current.version, sp.needs_write) for sp in p.secrets] == [
        ("app/new", 0, True), ("app/old", 2, True), ("app/same", 1, False)]
    assert [sp.target.path for sp in p.writes] == ["app/new", "app/old"]
    assert dict(p.secrets[1].desired) == {"A": "2", "EXTRA": "x"}

    # Someone writes both planned secrets after the plan: check-and-set refuses both writes,
    # the new one (cas=0) and the existing one (cas=2), and their data is kept.
    root.secrets.kv.v2.create_or_update_secret(path="app/new", secret={"THEIRS": "n"}, mount_point=kv2)
    root.secrets.kv.v2.create_or_update_secret(path="app/old", secret={"THEIRS": "o"}, mount_point=kv2)
    seen: list[str] = []
    out = M.apply(kv, p, progress=lambda sp: seen.append(sp.target.path))
    assert out.conflicts == ["app/new", "app/old"] and out.written == [] and out.exit_code == 3
    assert sorted(seen) == ["app/new", "app/old"]
    assert kv.read("app/old").data == {"THEIRS": "o"} and kv.read("app/new").data == {"THEIRS": "n"}

    again = M.plan(kv, targets, prune=True, fp=FP)
    out = M.apply(kv, again, concurrency=1)
    assert out.written == ["app/new", "app/old"] and out.exit_code == 0 and out.not_written == []
    assert kv.read("app/old").data == {"A": "2"} and kv.read("app/old").version == 4
    assert [sp.needs_write for sp in M.plan(kv, targets, prune=True, fp=FP).secrets] == [False, False, False]


def test_plan_fingerprints_with_the_given_key_or_a_new_one(kv2, root):
    kv = KV(root, kv2, 2)
    targets = [M.Target("fp/a", {"K": "v"}, {})]
    (sp,) = M.plan(kv, targets, fp=FP).secrets
    assert sp.changes == (M.KeyChange("K", M.ADDED, None, FP("v")),) and sp.current.path == "fp/a"
    (sp,) = M.plan(kv, targets).secrets
    assert sp.changes[0].status == M.ADDED and len(sp.changes[0].new or "") == 8 and sp.changes[0].new != FP("v")


def test_plan_with_list_but_no_read_permission_plans_absent_secrets_as_new(kv2, root, vault_server):
    """One LIST per folder finds which targets exist: absent ones are not read at all."""
    name = f"lister-{kv2}"
    root.sys.create_or_update_acl_policy(name, f'path "{kv2}/metadata/*" {{ capabilities = ["list"] }}')
    lister = vault_server.client(root.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"])
    p = M.plan(KV(lister, kv2, 2), [M.Target("new/a", {"A": "1"}, {}), M.Target("new/b", {"B": "1"}, {})], fp=FP)
    assert [(sp.current.path, sp.current.exists, sp.current.version) for sp in p.secrets] == [("new/a", False, 0), ("new/b", False, 0)]
    root.sys.delete_acl_policy(name)


def test_kv2_write_is_refused_when_the_secret_was_rewritten_with_the_same_data(kv2, root):
    """Check-and-set, not a comparison of contents: a write in between, even of equal data, is a conflict."""
    kv = KV(root, kv2, 2)
    kv.write("same/a", {"A": "1"})
    p = M.plan(kv, [M.Target("same/a", {"A": "2"}, {})], fp=FP)
    kv.write("same/a", {"A": "1"})  # version 2, same content
    out = M.apply(kv, p)
    assert out.conflicts == ["same/a"] and out.written == [] and kv.read("same/a").data == {"A": "1"}


def test_plan_without_list_permission_reads_every_target(kv2, root, vault_server):
    root.secrets.kv.v2.create_or_update_secret(path="f/there", secret={"A": "1"}, mount_point=kv2)
    name = f"readonly-{kv2}"
    root.sys.create_or_update_acl_policy(name, f'path "{kv2}/data/*" {{ capabilities = ["read"] }}')
    reader = vault_server.client(root.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"])
    kv = KV(reader, kv2, 2)
    assert M._existing(kv, [M.Target("f/there", {}, {})]) is None
    p = M.plan(kv, [M.Target("f/there", {"A": "1"}, {}), M.Target("f/absent", {"B": "1"}, {})], fp=FP)
    assert [(sp.current.exists, sp.current.version, sp.needs_write) for sp in p.secrets] == [(True, 1, False), (False, 0, True)]
    root.sys.delete_acl_policy(name)


def test_existing_lists_each_folder_once_and_ignores_subfolders(kv2, root):
    for path in ("top", "d/a", "d/sub/b"):
        root.secrets.kv.v2.create_or_update_secret(path=path, secret={"x": "1"}, mount_point=kv2)
    kv = KV(root, kv2, 2)
    targets = [M.Target(p, {}, {}) for p in ("top", "d/a", "d/sub", "d/sub/b", "none/x")]
    assert M._existing(kv, targets) == {"top", "d/a", "d/sub/b"}


def test_apply_on_kv1_re_reads_before_writing(kv1, root):
    kv = KV(root, kv1, 1)
    root.secrets.kv.v1.create_or_update_secret(path="app/a", secret={"A": "1"}, mount_point=kv1)
    targets = [M.Target("app/a", {"A": "2"}, {}), M.Target("app/b", {"B": "1"}, {})]
    p = M.plan(kv, targets, fp=FP)
    root.secrets.kv.v1.create_or_update_secret(path="app/a", secret={"A": "theirs"}, mount_point=kv1)
    out = M.apply(kv, p)
    assert out.conflicts == ["app/a"] and out.written == ["app/b"]
    assert kv.read("app/a").data == {"A": "theirs"}
    assert M.apply(kv, M.plan(kv, targets, fp=FP)).written == ["app/a"]
    assert kv.read("app/a").data == {"A": "2"}


def test_apply_records_refusals_and_stops_after_an_unreachable_server(kv2, root, vault_server):
    name = f"ro-{kv2}"
    root.sys.create_or_update_acl_policy(name, f'path "{kv2}/*" {{ capabilities = ["read", "list"] }}')
    reader = vault_server.client(root.auth.token.create(policies=[name], ttl="5m")["auth"]["client_token"])
    kv = KV(reader, kv2, 2)
    p = M.plan(kv, [M.Target("a", {"A": "1"}, {}), M.Target("b", {"B": "1"}, {})], fp=FP)
    out = M.apply(kv, p)
    assert [path for path, _ in out.failed] == ["a", "b"] and out.exit_code == 1
    assert all("permission denied" in why for _, why in out.failed)
    root.sys.delete_acl_policy(name)

    class Broken(KV):
        """The transport failures the real server cannot be made to produce on demand."""

        def __init__(self, error: Exception) -> None:
            super().__init__(root, kv2, 2)
            self.error, self.calls = error, 0

        def write(self, path, data, *, cas=None):  # type: ignore[no-untyped-def]
            self.calls += 1
            raise self.error

    targets = [M.Target(c, {c: "1"}, {}) for c in "abc"]
    for error, field in ((Unreachable("connection refused"), "failed"), (OutcomeUnknown("timed out"), "unknown")):
        broken = Broken(error)
        out = M.apply(broken, M.plan(KV(root, kv2, 2), targets, fp=FP), concurrency=1)
        assert broken.calls == 1, field  # no further write once the server stopped answering
        assert getattr(out, field) == [("a", str(error))] and out.abandoned == ["b", "c"]
        assert out.abandon_reason == "the server stopped answering" and out.exit_code == 1
    assert isinstance(Unreachable("x"), VaultError)


def test_apply_abandons_after_the_deadline(kv2, root):
    kv = KV(root, kv2, 2)
    p = M.plan(kv, [M.Target(c, {c: "1"}, {}) for c in "abc"], fp=FP)
    now = [100.0]
    seen: list[str] = []

    def clock() -> float:
        now[0] += 1
        return now[0]
    out = M.apply(kv, p, concurrency=1, deadline=102.5, clock=clock, progress=lambda sp: seen.append(sp.target.path))
    assert out.written == ["a", "b"] and out.abandoned == ["c"] and out.abandon_reason == "deadline reached"
    assert seen == ["a", "b", "c"] and kv.read("c").data is None


def test_apply_writes_concurrently(kv2, root):
    kv = KV(root, kv2, 2)
    p = M.plan(kv, [M.Target(f"c{i}", {"K": str(i)}, {}) for i in range(4)], fp=FP)
    inside, most = [0], [0]
    lock = threading.Lock()
    real_write = KV.write

    class Counting(KV):
        def write(self, path, data, *, cas=None):  # type: ignore[no-untyped-def]
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            try:
                barrier.wait(timeout=30)
                return real_write(self, path, data, cas=cas)
            finally:
                with lock:
                    inside[0] -= 1
    barrier = threading.Barrier(4)
    out = M.apply(Counting(root, kv2, 2), p, concurrency=4)
    assert out.written == ["c0", "c1", "c2", "c3"] and most[0] == 4
    # Concurrency 0 still means one worker (an empty pool would refuse to start).
    assert M.apply(kv, M.plan(kv, [M.Target("z", {"K": "1"}, {})], fp=FP, concurrency=0), concurrency=0).written == ["z"]


def sample_plan(kv_version: int = 2) -> M.Plan:
    def sp(path: str, current: Secret, changes: list[M.KeyChange]) -> M.SecretPlan:
        return M.SecretPlan(M.Target(path, {}, {}), current, tuple(changes), {})
    return M.Plan("kv", kv_version, (
        sp("new", Secret("new", None), [M.KeyChange("A", M.ADDED, new="f1")]),
        sp("old", Secret("old", {"x": 1}, 3), [M.KeyChange("B", M.CHANGED, "f2", "f3"), M.KeyChange("C", M.REMOVED, old="f4"),
                                               M.KeyChange("D", M.UNCHANGED, "f5", "f5"), M.KeyChange("E", M.ONLY_IN_VAULT, old="f6")]),
        sp("same", Secret("same", {"x": 1}, 1), [M.KeyChange("F", M.UNCHANGED, "f7", "f7")]),
        sp("empty", Secret("empty", {}, 1), []),
    ), False)


def test_plan_as_text():
    assert M.plan_as_text(sample_plan()) == "\n".join([
        "Plan for mount 'kv' (KV v2):",
        "  kv/new (new secret): 1 added",
        "    + A  [f1]",
        "  kv/old (version 3): 1 changed, 1 removed, 1 unchanged, 1 only in vault",
        "    ~ B  [f2 -> f3]",
        "    - C  [f4]",
        "    ? E  [f6 (kept; --prune removes)]",
        "  kv/same (version 1): 1 unchanged - no write",
        "  kv/empty (version 1): empty - no write",
        "2 of 4 secrets to write.",
    ])
    verbose = M.plan_as_text(sample_plan(1), verbose=True).splitlines()
    assert verbose[0] == "Plan for mount 'kv' (KV v1):" and "  kv/old (exists): 1 changed, 1 removed, 1 unchanged, 1 only in vault" in verbose
    assert "    = D  [f5]" in verbose and "    = F  [f7]" in verbose


def test_plan_as_dict():
    doc = M.plan_as_dict(sample_plan())
    assert doc["mount"] == "kv" and doc["kv_version"] == 2 and doc["prune"] is False and doc["writes"] == 2
    assert doc["secrets"][0] == {"path": "new", "exists": False, "version": 0, "write": True,
                                 "keys": [{"key": "A", "status": "added", "old": None, "new": "f1"}]}
    assert doc["secrets"][1]["keys"][0] == {"key": "B", "status": "changed", "old": "f2", "new": "f3"}
    assert [(s["path"], s["exists"], s["version"], s["write"]) for s in doc["secrets"][1:]] == [
        ("old", True, 3, True), ("same", True, 1, False), ("empty", True, 1, False)]
