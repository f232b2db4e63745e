"""API keys and quotas without Ray: the key database, the admission decision, the `spectrashield keys` CLI."""

from __future__ import annotations

import pickle
import stat

import pytest

from deployments.keys import Admission, GatekeeperConfig, KeyStore, OpenBindRefused, Refusal, check_bind, main


@pytest.fixture()
def db(tmp_path):
    return tmp_path / "private" / "keys.sqlite"


def _refusal(admission: Admission, *args) -> Refusal:
    with pytest.raises(Refusal) as caught:
        admission.admit(*args)
    return caught.value


def test_only_the_hash_of_a_key_is_stored_and_the_file_is_private(db) -> None:
    store = KeyStore(db)
    token = store.create("alice", ("analyze",), 10, 2**20)
    assert token.startswith("ss_") and len(token) > 40
    assert token.encode() not in db.read_bytes()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600 and stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    assert store.lookup(token).name == "alice" and store.lookup(token + "x") is None
    with pytest.raises(ValueError, match="exists"):
        store.create("alice", ("analyze",), 10, 2**20)
    with pytest.raises(ValueError, match="scopes"):
        store.create("bob", ("root",), 10, 2**20)
    assert store.revoke("alice") and not store.revoke("alice")
    assert store.lookup(token) is None and store.active() == 0


def test_admission_asks_for_a_live_key_with_the_scope(db) -> None:
    store = KeyStore(db)
    analyst = store.create("analyst", ("analyze",), 100, 2**30)
    admin = store.create("ops", ("admin",), 100, 2**30)
    gate = Admission(GatekeeperConfig(keys_db=str(db)))
    assert _refusal(gate, None, "127.0.0.1", "analyze", 0).status == 401
    assert _refusal(gate, "Basic abc", "127.0.0.1", "analyze", 0).status == 401
    assert _refusal(gate, "Bearer ss_wrong", "127.0.0.1", "analyze", 0).status == 401
    caller = gate.admit(f"Bearer {analyst}", "10.0.0.7", "analyze", 1000)
    assert caller.name == "analyst" and not caller.may("admin") and caller.may("")
    refused = _refusal(gate, f"Bearer {analyst}", "10.0.0.7", "jobs", 0)
    assert refused.status == 403 and "jobs" in refused.detail
    assert gate.admit(f"bearer {admin}", "10.0.0.7", "jobs", 0).may("admin")  # admin holds every scope
    store.revoke("analyst")
    assert _refusal(gate, f"Bearer {analyst}", "10.0.0.7", "analyze", 0).status == 401


def test_a_burst_over_the_request_quota_gets_429_with_retry_after(db) -> None:
    token = KeyStore(db).create("burst", ("analyze",), 3, 2**30)
    gate = Admission(GatekeeperConfig(keys_db=str(db)))
    for _ in range(3):
        gate.admit(f"Bearer {token}", None, "analyze", 10)
    refused = _refusal(gate, f"Bearer {token}", None, "analyze", 10)
    assert refused.status == 429 and 1 <= refused.retry_after_s <= 60 and "3 requests per minute" in refused.detail
    copy = pickle.loads(pickle.dumps(refused))  # the Gatekeeper hands it to the ingress as a value
    assert (copy.status, copy.detail, copy.retry_after_s) == (refused.status, refused.detail, refused.retry_after_s)


def test_the_byte_quota_counts_declared_bytes(db) -> None:
    token = KeyStore(db).create("bytes", ("analyze",), 100, 1000)
    gate = Admission(GatekeeperConfig(keys_db=str(db)))
    gate.admit(f"Bearer {token}", None, "analyze", 600)
    assert _refusal(gate, f"Bearer {token}", None, "analyze", 600).status == 429
    assert _refusal(gate, f"Bearer {token}", None, "analyze", 5000).status == 413  # could never fit a minute


def test_without_keys_the_service_is_open_to_loopback_clients_only(caplog) -> None:
    with caplog.at_level("WARNING", logger="ray.serve"):
        gate = Admission(GatekeeperConfig())
    assert "NO API KEYS CONFIGURED" in caplog.text
    assert gate.admit(None, "127.0.0.1", "analyze", 0).may("admin")
    assert gate.admit(None, "::1", "jobs", 0).may("admin")
    assert _refusal(gate, None, "192.168.1.20", "analyze", 0).status == 403
    assert _refusal(gate, None, None, "analyze", 0).status == 403
    assert Admission(GatekeeperConfig(allow_open=True)).admit(None, "192.168.1.20", "analyze", 0).may("analyze")


def test_the_keys_cli_creates_lists_and_revokes(db, capsys) -> None:
    assert main(["create", "--db", str(db), "--name", "ci", "--scopes", "analyze,jobs", "--requests-per-minute", "5"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert KeyStore(db).lookup(token).scopes == ("analyze", "jobs")
    assert main(["list", "--db", str(db)]) == 0
    listed = capsys.readouterr().out
    assert "ci\tanalyze,jobs\t5 req/min" in listed and token not in listed
    assert main(["revoke", "--db", str(db), "--name", "ci"]) == 0
    assert main(["revoke", "--db", str(db), "--name", "ci"]) == 1
    assert KeyStore(db).lookup(token) is None


def test_open_service_behind_a_non_loopback_bind_is_refused(db) -> None:
    with pytest.raises(OpenBindRefused, match="bound to 0.0.0.0 and no API keys"):
        check_bind(GatekeeperConfig(), "0.0.0.0")
    with pytest.raises(OpenBindRefused):
        check_bind(GatekeeperConfig(), "10.1.2.3")
    check_bind(GatekeeperConfig(), "127.0.0.1")
    check_bind(GatekeeperConfig(), "::1")
    check_bind(GatekeeperConfig(), None)  # unknown: the per-request loopback check still holds
    check_bind(GatekeeperConfig(allow_open=True), "0.0.0.0")
    check_bind(GatekeeperConfig(keys_db=str(db)), "0.0.0.0")


def test_quota_counters_go_where_rate_limit_storage_says(db) -> None:
    token = KeyStore(db).create("ci", ("analyze",), 1, 10**6)
    gate = Admission(GatekeeperConfig(keys_db=str(db), rate_limit_storage="memory://"))
    gate.admit(f"Bearer {token}", None, "analyze", 0)
    assert _refusal(gate, f"Bearer {token}", None, "analyze", 0).status == 429
    with pytest.raises(ValueError, match="rate_limit_storage 'nosuch://x'"):
        Admission(GatekeeperConfig(keys_db=str(db), rate_limit_storage="nosuch://x"))
