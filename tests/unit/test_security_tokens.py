"""Token files, hashing, lookups, reloads and client tokens; secrets stay out of text."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.security.roles import Role
from nethical_grpc.security.tokens import (
    BearerToken,
    Principal,
    TokenFile,
    TokenStore,
    client_token,
    generate_token,
    hash_token,
    parse_token_lines,
    server_tokens,
    token_line,
)

TOKEN_A = "tok-alpha-0123456789abcdef"
TOKEN_B = "tok-bravo-0123456789abcdef"

token_text = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16, max_size=200
)


def test_hash_token_is_sha256_hex() -> None:
    assert hash_token(TOKEN_A) == hashlib.sha256(TOKEN_A.encode()).hexdigest()
    assert len(hash_token(TOKEN_A)) == 64


def test_parse_lines_with_comments_and_several_roles() -> None:
    text = (
        "# role name hash\n"
        f"coordinator coord-1 {hash_token(TOKEN_A)}\n"
        "\n"
        f"client,operator ops {hash_token(TOKEN_B).upper()}  # console\n"
    )
    entries = parse_token_lines(text)
    assert [p for _, p in entries] == [
        Principal("coord-1", frozenset({Role.COORDINATOR})),
        Principal("ops", frozenset({Role.CLIENT, Role.OPERATOR})),
    ]
    assert entries[1][0] == hashlib.sha256(TOKEN_B.encode()).digest()


def test_semicolons_separate_entries_as_in_the_environment() -> None:
    text = f"client a {hash_token(TOKEN_A)}; operator b {hash_token(TOKEN_B)}"
    assert [p.name for _, p in parse_token_lines(text)] == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("client onlytwo", "expected 'ROLE"),
        ("admin x {h}", "unknown role"),
        ("client bad!name {h}", "name must be"),
        ("client x 1234", "64 hex digits"),
        ("client x {h}\noperator y {h}", "hash appears twice"),
        ("client x {h}\noperator x {h2}", "appears twice"),
    ],
)
def test_bad_lines_say_which_entry_without_its_text(line: str, message: str) -> None:
    h, h2 = hash_token(TOKEN_A), hash_token(TOKEN_B)
    text = line.format(h=h, h2=h2)
    with pytest.raises(ValueError, match=message) as info:
        parse_token_lines(text, "tokens.txt")
    assert "tokens.txt entry" in str(info.value)
    assert h not in str(info.value)
    assert "bad!name" not in str(info.value)


def test_a_plain_token_pasted_instead_of_its_hash_is_not_echoed() -> None:
    with pytest.raises(ValueError) as info:
        parse_token_lines(f"client app {TOKEN_A}")
    assert TOKEN_A not in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_token_lines(f"{TOKEN_A} app {hash_token(TOKEN_B)}")
    assert TOKEN_A not in str(info.value)


def test_store_authenticates_known_tokens_only() -> None:
    store = TokenStore.from_text(
        f"coordinator c {hash_token(TOKEN_A)}\nclient l {hash_token(TOKEN_B)}"
    )
    principal = store.authenticate(TOKEN_A)
    assert principal is not None
    assert principal.name == "c"
    assert principal.roles == {Role.COORDINATOR}
    assert store.authenticate(TOKEN_B) == Principal("l", frozenset({Role.CLIENT}))
    assert store.authenticate(TOKEN_A + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate("\udcff-surrogate") is None
    assert repr(store) == "TokenStore(2 tokens)"
    assert hash_token(TOKEN_A) not in repr(store)


@settings(max_examples=60, deadline=None)
@given(tokens=st.lists(token_text, min_size=1, max_size=6, unique=True), probe=token_text)
def test_line_round_trip_finds_exactly_the_issued_tokens(tokens: list[str], probe: str) -> None:
    lines = [token_line(Role.CLIENT, f"n{i}", BearerToken(t)) for i, t in enumerate(tokens)]
    store = TokenStore.from_text("\n".join(lines))
    for i, t in enumerate(tokens):
        found = store.authenticate(t)
        assert found is not None
        assert found.name == f"n{i}"
    assert (store.authenticate(probe) is not None) == (probe in tokens)


def test_bearer_token_never_shows_its_value() -> None:
    token = BearerToken(TOKEN_A)
    for text in (repr(token), str(token), f"{token}", repr([token]), repr({"t": token})):
        assert TOKEN_A not in text
    assert token.value == TOKEN_A
    assert token.header() == f"Bearer {TOKEN_A}"
    assert token == BearerToken(TOKEN_A)
    assert token != BearerToken(TOKEN_B)


@pytest.mark.parametrize(
    "bad", ["short", "has space in the middle!!", "x" * 5000, "tab\tinside-0123456789"]
)
def test_unusable_tokens_are_refused_without_echo(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        BearerToken(bad)
    assert bad not in str(info.value)


def test_generated_tokens_are_distinct_and_usable() -> None:
    a, b = generate_token(), generate_token()
    assert a != b
    assert len(a.value) >= 40
    line = token_line([Role.OPERATOR, Role.CLIENT], "svc", a)
    assert line == f"client,operator svc {a.sha256_hex()}"
    assert a.value not in line
    with pytest.raises(ValueError, match="at least one role"):
        token_line([], "svc", a)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a new inode: the change is seen whatever the mtime resolution


def test_token_file_reloads_on_change_and_keeps_tokens_on_a_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "tokens"
    first = f"client app {hash_token(TOKEN_A)}\n"
    _write(path, first)
    store = TokenFile(path, check_interval_s=0.0)
    assert store.authenticate(TOKEN_A) is not None
    assert store.authenticate(TOKEN_B) is None

    second = f"operator ops {hash_token(TOKEN_B)}\n"
    _write(path, second)  # revoke A, add B
    assert store.authenticate(TOKEN_A) is None
    assert store.authenticate(TOKEN_B) == Principal("ops", frozenset({Role.OPERATOR}))

    broken = f"operator ops {hash_token(TOKEN_B)}\nclient app {TOKEN_A}\n"
    _write(path, broken)
    assert not store.reload_if_changed()
    assert store.authenticate(TOKEN_B) is not None  # previous tokens kept
    assert "not reloaded" in caplog.text

    path.unlink()
    assert not store.reload_if_changed()
    assert store.authenticate(TOKEN_B) is not None

    for secret in (hash_token(TOKEN_A), hash_token(TOKEN_B), TOKEN_A, TOKEN_B):
        assert secret not in caplog.text
    assert str(path) in caplog.text  # the path is logged, the content never


def test_a_token_file_emptied_in_place_keeps_its_tokens_until_it_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``cat new > tokens`` truncates the file before it writes it: a check in between
    must not revoke every token. A comment-only file does revoke them all."""
    path = tmp_path / "tokens"
    path.write_text(f"client app {hash_token(TOKEN_A)}\n")
    store = TokenFile(path, check_interval_s=0.0)
    with path.open("r+") as f:
        f.truncate(0)  # the shell's ">" before the new text arrives
        assert not store.reload_if_changed()
        assert store.authenticate(TOKEN_A) is not None
        assert "is empty; keeping 1 tokens" in caplog.text
        f.write(f"operator ops {hash_token(TOKEN_B)}\n")
    assert store.reload_if_changed()
    assert store.authenticate(TOKEN_A) is None
    assert store.authenticate(TOKEN_B) is not None
    _write(path, "# every token revoked\n")
    assert store.reload_if_changed()
    assert store.authenticate(TOKEN_B) is None


def test_token_file_is_not_restatted_before_the_interval(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    _write(path, f"client app {hash_token(TOKEN_A)}\n")
    store = TokenFile(path, check_interval_s=3600.0)
    _write(path, f"client app {hash_token(TOKEN_B)}\n")
    assert store.authenticate(TOKEN_A) is not None  # not re-read yet
    assert store.reload_if_changed()
    assert store.authenticate(TOKEN_B) is not None


def test_server_tokens_sources(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"client app {hash_token(TOKEN_A)}\n")
    assert server_tokens(None, {}) is None
    from_file = server_tokens(None, {"NETHICAL_AUTH_TOKENS_FILE": str(path)})
    assert isinstance(from_file, TokenFile)
    assert from_file.authenticate(TOKEN_A) is not None
    inline = server_tokens(None, {"NETHICAL_AUTH_TOKEN_HASHES": f"client x {hash_token(TOKEN_B)}"})
    assert inline is not None
    assert inline.authenticate(TOKEN_B) is not None
    with pytest.raises(ValueError, match="not both"):
        server_tokens(path, {"NETHICAL_AUTH_TOKEN_HASHES": f"client x {hash_token(TOKEN_B)}"})
    with pytest.raises(ValueError, match="holds no token"):
        server_tokens(None, {"NETHICAL_AUTH_TOKEN_HASHES": " # nothing"})
    with pytest.raises(FileNotFoundError):
        server_tokens(tmp_path / "missing", {})


def test_client_token_sources(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN_A + "\n")
    assert client_token(None, {}) is None
    assert client_token(path, {"NETHICAL_TOKEN": TOKEN_B}) == BearerToken(TOKEN_A)
    assert client_token(None, {"NETHICAL_TOKEN_FILE": str(path)}) == BearerToken(TOKEN_A)
    assert client_token(None, {"NETHICAL_TOKEN": f" {TOKEN_B} "}) == BearerToken(TOKEN_B)
    with pytest.raises(ValueError, match="NETHICAL_TOKEN") as info:
        client_token(None, {"NETHICAL_TOKEN": "short-secret"})
    assert "short-secret" not in str(info.value)
    path.write_text("")
    with pytest.raises(ValueError, match="token file"):
        client_token(path, {})


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_bytes(b"\xef\xbb\xbf" + f"client app {hash_token(TOKEN_A)}\n".encode())
    assert TokenFile(path).authenticate(TOKEN_A) is not None


def test_a_client_token_file_with_a_byte_order_mark_and_crlf_gives_the_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xef\xbb\xbf" + TOKEN_A.encode() + b"\r\n")
    assert client_token(path, {}) == BearerToken(TOKEN_A)


def test_files_that_are_not_utf8_are_named_without_their_bytes(tmp_path: Path) -> None:
    client = tmp_path / "token"
    client.write_bytes(b"\xfe" + TOKEN_A.encode())
    with pytest.raises(ValueError, match=f"token file {client}: not UTF-8") as info:
        client_token(client, {})
    assert "0xfe" not in str(info.value)
    server = tmp_path / "tokens"
    server.write_bytes(f"client app {hash_token(TOKEN_A)} # \xe9t\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=f"tokens file {server}: not UTF-8"):
        server_tokens(server, {})


def test_files_that_deserve_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nobody yet\n")
    shared = tmp_path / "shared"
    shared.write_text(f"operator ops {hash_token(TOKEN_A)}\n")
    shared.chmod(0o666)
    own = tmp_path / "own"
    own.write_text(f"operator ops {hash_token(TOKEN_A)}\n")
    own.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="nethical_grpc.security.tokens"):
        TokenFile(empty)
        TokenFile(shared)
        TokenFile(own)
    said = [r.getMessage() for r in caplog.records]
    assert any("holds no token" in m and str(empty) in m for m in said)
    assert any("any local user" in m and str(shared) in m for m in said)
    assert not any(str(own) in m for m in said)
