"""Review findings on the rule detectors: obvious variants of destructive statements and
commands that went unreported (table aliases, ``ONLY``, several tables, lower-case Redis
commands, ``OR 1=1``, a quoted ``/``), and the benign texts that must stay silent."""

from __future__ import annotations

import pytest

from nethical_grpc.governance import detectors
from nethical_grpc.governance.decision import Decision, evaluate_action
from nethical_grpc.governance.detectors import Action, detect


def _rules(text: str) -> set[str]:
    return {v.detector for v in detect(Action("agent-1", text, "tool_call"))}


def _unfiltered(action: Action, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    with monkeypatch.context() as m:
        m.setattr(detectors._ActionView, "may_fire", lambda self, rule, name: True)
        m.setattr(detectors._ActionView, "may_fire_anywhere", lambda self, rule: True)
        return list(detect(action))


MISSED = [
    # a DELETE / UPDATE of every row, with a table alias or ONLY (PostgreSQL)
    ("DELETE FROM users u;", "destructive_database.delete_no_where"),
    ("DELETE FROM users AS u;", "destructive_database.delete_no_where"),
    ("delete from only public.users", "destructive_database.delete_no_where"),
    ("DELETE FROM users *;", "destructive_database.delete_no_where"),
    ("UPDATE users u SET is_admin = true;", "destructive_database.update_no_where"),
    ("UPDATE accounts AS a SET balance = 0", "destructive_database.update_no_where"),
    ("UPDATE ONLY users SET is_admin = true", "destructive_database.update_no_where"),
    # TRUNCATE of several tables, or of ONLY one
    ("TRUNCATE users, orders;", "destructive_database.truncate"),
    ("TRUNCATE ONLY users;", "destructive_database.truncate"),
    ("truncate users, orders restart identity cascade", "destructive_database.truncate"),
    # Redis commands are case-insensitive (the module docstring: keyword patterns are)
    ("redis-cli flushall", "destructive_database.nosql_wipe"),
    ("redis-cli -n 2 FlushDB", "destructive_database.nosql_wipe"),
    # the classic always-true WHERE: ... OR 1=1
    ("DELETE FROM users WHERE name = 'x' OR 1=1", "destructive_database.tautology_where"),
    (
        "UPDATE users SET role = 'admin' WHERE id = 4 OR 'a'='a';",
        "destructive_database.tautology_where",
    ),
    # a quoted / or $HOME is still the root / the home directory
    ('rm -rf "/"', "command_injection.rm_rf_root"),
    ("sudo rm -rf '/'", "command_injection.rm_rf_root"),
    ('rm -rf "$HOME"', "command_injection.rm_rf_root"),
]


@pytest.mark.parametrize(("text", "rule"), MISSED)
def test_obvious_variants_are_found(text: str, rule: str) -> None:
    assert rule in _rules(text)


@pytest.mark.parametrize(("text", "rule"), MISSED)
def test_obvious_variants_same_with_and_without_prefilter(
    text: str, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    action = Action("agent-1", text, "tool_call")
    assert detect(action) == _unfiltered(action, monkeypatch)


def test_delete_of_every_row_through_an_alias_blocks() -> None:
    # CRITICAL x 0.90 alone: 0.72, BLOCK, as for the statement without the alias
    plain = evaluate_action(Action("a1", "DELETE FROM users;", "sql"))
    aliased = evaluate_action(Action("a1", "DELETE FROM users u;", "sql"))
    assert plain.decision is Decision.BLOCK
    assert aliased.decision is plain.decision
    assert aliased.risk_score == plain.risk_score


BENIGN = [
    ("DELETE FROM users u WHERE u.id = 1;", "destructive_database"),
    ("DELETE FROM users AS u WHERE u.expired", "destructive_database"),
    ("UPDATE users u SET name = 'x' WHERE u.id = 3", "destructive_database"),
    ("UPDATE ONLY users SET name = 'x' WHERE id = 3", "destructive_database"),
    ("truncate the long titles to 80 characters", "destructive_database"),
    ("SELECT * FROM products WHERE name = 'x' OR 1=1", "destructive_database"),
    ("DELETE FROM t WHERE id = 1; SELECT a FROM b WHERE x OR 1=1", "destructive_database"),
    ("you should flush all caches before the release", "destructive_database"),
    ('rm -rf "/tmp/build"', "command_injection.rm_rf_root"),
    ("rm -rf '~/tmp'", "command_injection.rm_rf_root"),
    # prose where a table and its alias would be: a determiner is no table name
    ("Please update the config set timeout = 5", "destructive_database"),
    ("I will update my profile set name = Bob", "destructive_database"),
    ("delete from the list the item;", "destructive_database"),
]


@pytest.mark.parametrize(("text", "prefix"), BENIGN)
def test_benign_variants_stay_silent(text: str, prefix: str) -> None:
    assert not {r for r in _rules(text) if r.startswith(prefix)}
