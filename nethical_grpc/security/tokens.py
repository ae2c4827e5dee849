"""Bearer tokens: how servers know them (hashes only) and how clients find theirs.

Server side, a token is known by the SHA-256 of its text, never by the text. A tokens
file holds one token per line::

    # ROLE[,ROLE...]  NAME          SHA256-HEX
    coordinator       coord-eu      3f1c...64 hex digits
    client,operator   ops-console   9ab0...

``#`` starts a comment; blank lines are skipped. NAME identifies the holder in logs
and errors (it is not secret); a token may hold several roles. The same lines can come
from the environment (``NETHICAL_AUTH_TOKEN_HASHES``, entries separated by newlines or
``;``). Generate a token and its line with :func:`generate_token` and
:func:`token_line`.

Client side, the token itself comes from ``--token-file`` / ``NETHICAL_TOKEN_FILE`` (the
file's first line) or ``NETHICAL_TOKEN``, wrapped in :class:`BearerToken`, whose repr
never shows it.

Lookups hash the presented token and compare it with every known digest using
:func:`hmac.compare_digest`, without stopping at a match, so the time taken does not
depend on which digest (if any) matched or where.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nethical_grpc.security.flags import ENV_TOKEN_HASHES, ENV_TOKENS_FILE, env_name
from nethical_grpc.security.roles import Role

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 16
MAX_TOKEN_CHARS = 4096
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space: a metadata value
_HEX_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[A-Za-z0-9._@:/-]{1,128}")


class BearerToken:
    """A client's secret token. ``str()``/``repr()`` show ``<redacted>``; use :attr:`value`.

    Raises ValueError when the text is not a usable token (shorter than 16 or longer
    than 4096 characters, or not printable ASCII without spaces); the message never
    contains the text.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        check_token_text(value)
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def header(self) -> str:
        """The ``authorization`` metadata value: ``Bearer <token>``."""
        return f"Bearer {self._value}"

    def sha256_hex(self) -> str:
        return hash_token(self._value)

    def __repr__(self) -> str:
        return "BearerToken(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BearerToken):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self.sha256_hex())


def check_token_text(value: str) -> None:
    """Raise ValueError (without echoing ``value``) unless it is a usable token."""
    if not MIN_TOKEN_CHARS <= len(value) <= MAX_TOKEN_CHARS:
        raise ValueError(
            f"a token must be {MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters, got {len(value)}"
        )
    if not _TOKEN_RE.fullmatch(value):
        raise ValueError("a token must be printable ASCII without spaces")


def hash_token(token: str) -> str:
    """SHA-256 of the token's UTF-8 text, as 64 lowercase hex digits."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> BearerToken:
    """A new random token: 32 bytes from :mod:`secrets`, URL-safe base64 (43 chars)."""
    return BearerToken(secrets.token_urlsafe(32))


def token_line(roles: Iterable[Role] | Role, name: str, token: BearerToken) -> str:
    """The tokens-file line for ``token``: ``ROLE[,ROLE] NAME SHA256HEX``."""
    role_list = [roles] if isinstance(roles, Role) else list(roles)
    if not role_list:
        raise ValueError("a token needs at least one role")
    _check_name(name)
    return f"{','.join(sorted({r.value for r in role_list}))} {name} {token.sha256_hex()}"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token belongs to: a name (for logs and errors) and its roles."""

    name: str
    roles: frozenset[Role]

    def roles_text(self) -> str:
        return ",".join(sorted(r.value for r in self.roles))


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes  # 32 bytes
    principal: Principal


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"token name {name[:40]!r} must be 1-128 letters, digits or ._@:/-")


def parse_token_lines(text: str, source: str = "tokens") -> list[tuple[bytes, Principal]]:
    """Parse ``ROLE[,ROLE] NAME SHA256HEX`` lines (newline- or ``;``-separated).

    Raises ValueError naming ``source`` and the line number (never the line's text):
    a wrong field count, an unknown role, a bad name, a digest that is not 64 hex
    digits, or a digest or name given twice.
    """
    entries: list[tuple[bytes, Principal]] = []
    seen_digests: set[bytes] = set()
    seen_names: set[str] = set()
    for number, raw in enumerate(re.split(r"[\n;]", text), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source} entry {number}"
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(
                f"{where}: expected 'ROLE[,ROLE] NAME SHA256HEX', got {len(parts)} fields"
            )
        roles_text, name, digest_hex = parts
        # messages name the entry, never its text: a misplaced token must not be logged
        try:
            roles = frozenset(Role.parse(r) for r in roles_text.split(",") if r)
        except ValueError:
            known = ", ".join(r.value for r in Role)
            raise ValueError(f"{where}: unknown role in the first field (known: {known})") from None
        if not roles:
            raise ValueError(f"{where}: no role")
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"{where}: the name must be 1-128 letters, digits or ._@:/-")
        digest_hex = digest_hex.lower()
        if not _HEX_RE.fullmatch(digest_hex):
            raise ValueError(f"{where}: the hash must be 64 hex digits (SHA-256 of the token)")
        digest = bytes.fromhex(digest_hex)
        if digest in seen_digests:
            raise ValueError(f"{where}: the same token hash appears twice")
        if name in seen_names:
            raise ValueError(f"{where}: the name {name!r} appears twice")
        seen_digests.add(digest)
        seen_names.add(name)
        entries.append((digest, Principal(name, roles)))
    return entries


class TokenStore:
    """Known tokens by SHA-256 digest; :meth:`authenticate` maps a token to its principal.

    Holds digests only. ``repr`` shows the count, not the digests. Thread-safe: the
    entry list is replaced whole by :meth:`replace`.
    """

    def __init__(self, entries: Iterable[tuple[bytes, Principal]] = ()) -> None:
        self._entries: tuple[_Entry, ...] = ()
        self.replace(entries)

    @classmethod
    def from_text(cls, text: str, source: str = "tokens") -> TokenStore:
        return cls(parse_token_lines(text, source))

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, tuple[Iterable[Role], BearerToken]]) -> TokenStore:
        """From ``{name: (roles, token)}`` (tests, embedded use); keeps only the digests."""
        return cls(
            (hashlib.sha256(token.value.encode()).digest(), Principal(name, frozenset(roles)))
            for name, (roles, token) in tokens.items()
        )

    def replace(self, entries: Iterable[tuple[bytes, Principal]]) -> None:
        made = tuple(_Entry(d, p) for d, p in entries)
        for entry in made:
            if len(entry.digest) != 32:
                raise ValueError("a token digest must be 32 bytes (SHA-256)")
        self._entries = made

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenStore({len(self._entries)} tokens)"

    def authenticate(self, token: str) -> Principal | None:
        """The principal holding ``token``, or None. Compares against every digest
        (about 0.2 µs each, plus one SHA-256): meant for tens to hundreds of tokens."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for entry in self._entries:  # no early exit: same work whichever entry matches
            if hmac.compare_digest(presented, entry.digest):
                found = entry.principal
        return found

    def principals(self) -> list[Principal]:
        return [e.principal for e in self._entries]


class TokenFile(TokenStore):
    """A :class:`TokenStore` read from a tokens file and re-read when the file changes.

    At most every ``check_interval_s`` seconds a lookup stats the file; when its inode,
    size, mtime or ctime changed, the file is parsed again and replaces the tokens
    (revoking a token takes effect without a restart). A file that no longer parses
    (or is empty, or gone) keeps the previous tokens and logs an error with the line
    number (never the content), once: the same file is not parsed or reported again
    until it changes.
    The stat, and the re-read on a change, run on the calling thread (in a server, the
    event loop): a tokens file is a few lines. Construction raises ValueError/OSError
    when the file cannot be read or parsed.
    """

    def __init__(self, path: str | os.PathLike[str], check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._stamp = _stamp(self.path)
        super().__init__(parse_token_lines(_read(self.path), str(self.path)))
        self._next_check = time.monotonic() + check_interval_s
        self._lock = threading.Lock()
        # what the last failed reload saw (a stamp, or a stat error): reported once
        self._failed: object = None
        if len(self):
            log.info("loaded %d tokens from %s", len(self), self.path)
        else:
            log.warning(
                "tokens file %s holds no token: every call that needs one is refused", self.path
            )
        if self.path.stat().st_mode & 0o002:
            log.warning(
                "tokens file %s can be changed by any local user (mode %o): anyone could add "
                "a token with any role; make it writable by its owner only",
                self.path,
                self.path.stat().st_mode & 0o777,
            )

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, {len(self)} tokens)"

    def authenticate(self, token: str) -> Principal | None:
        if time.monotonic() >= self._next_check:
            self.reload_if_changed()
        return super().authenticate(token)

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when new tokens were loaded."""
        with self._lock:
            self._next_check = time.monotonic() + self.check_interval_s
            try:
                stamp = _stamp(self.path)
            except OSError as exc:
                if self._failed != ("stat", exc.errno):
                    self._failed = ("stat", exc.errno)
                    log.error(
                        "tokens file %s unreadable (%s); keeping %d tokens",
                        self.path,
                        exc.strerror,
                        len(self),
                    )
                return False
            if stamp == self._stamp or stamp == self._failed:
                return False
            self._failed = stamp  # until it parses below
            if stamp[2] == 0:  # a file rewritten in place, caught between truncate and write
                log.error(
                    "tokens file %s is empty; keeping %d tokens (to revoke every token, leave "
                    "a comment line in it)",
                    self.path,
                    len(self),
                )
                return False
            try:
                entries = parse_token_lines(_read(self.path), str(self.path))
            except (OSError, ValueError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                log.error(
                    "tokens file %s not reloaded: %s; keeping %d tokens",
                    self.path,
                    reason,
                    len(self),
                )
                return False
            self.replace(entries)
            self._stamp = stamp
            self._failed = None
            log.info("reloaded %d tokens from %s", len(self), self.path)
            return True


def _read(path: Path, what: str = "tokens file") -> str:
    """The file's text; a UTF-8 byte-order mark (some editors write one) is dropped.

    Raises OSError when it cannot be read, ValueError naming the file (never its bytes:
    a client's token file holds the secret) when it is not UTF-8.
    """
    try:
        return path.read_text("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path}: not UTF-8") from None


def _stamp(path: Path) -> tuple[int, int, int, int, int]:
    """Device, inode, size, mtime and ctime (a chmod that makes the file readable again
    changes the ctime only)."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def server_tokens(
    tokens_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> TokenStore | None:
    """The server's known tokens: ``tokens_file``, else ``$NETHICAL_AUTH_TOKENS_FILE``,
    else ``$NETHICAL_AUTH_TOKEN_HASHES``; None when none is set (authentication off).

    Raises ValueError/OSError when the file or the variable does not parse, or both a
    file and the hashes variable are given (one source, no merge surprises).
    """
    env = os.environ if env is None else env
    path = tokens_file or env.get(ENV_TOKENS_FILE) or None
    hashes = env.get(ENV_TOKEN_HASHES, "").strip()
    if path and hashes:
        raise ValueError(f"give either a tokens file or {ENV_TOKEN_HASHES}, not both")
    if path:
        return TokenFile(path)
    if hashes:
        store = TokenStore.from_text(hashes, ENV_TOKEN_HASHES)
        if not len(store):
            raise ValueError(f"{ENV_TOKEN_HASHES} holds no token")
        return store
    return None


def client_token(
    token_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    prefix: str = "",
) -> BearerToken | None:
    """The client's token: the first line of ``token_file`` (else
    ``$NETHICAL_TOKEN_FILE``), else ``$NETHICAL_TOKEN``; None when none is set.

    ``prefix`` names the variables of one kind of peer, as the flags do: ``"region-"``
    reads ``$NETHICAL_REGION_TOKEN_FILE`` and ``$NETHICAL_REGION_TOKEN``.

    Raises ValueError (naming the file or variable, without the token text) when it is
    not a usable token, OSError when the file cannot be read.
    """
    env = os.environ if env is None else env
    file_var, token_var = env_name(prefix, "token-file"), env_name(prefix, "token")
    path = token_file or env.get(file_var) or None
    if path:
        lines = _read(Path(path), "token file").splitlines()
        text = lines[0].strip() if lines else ""
        try:
            return BearerToken(text)
        except ValueError as exc:
            raise ValueError(f"token file {path}: {exc}") from None
    text = env.get(token_var, "").strip()
    if text:
        try:
            return BearerToken(text)
        except ValueError as exc:
            raise ValueError(f"{token_var}: {exc}") from None
    return None
