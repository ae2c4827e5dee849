"""The audit index's token statistics per text, and their cache."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nethical_grpc.storage.audit import sqlite_fts
from nethical_grpc.storage.audit.model import text_tokens


def expected(text: str) -> tuple[int, frozenset[str], dict[str, int]]:
    tokens = text_tokens(text)
    return len(tokens), frozenset(tokens), {t: c for t, c in Counter(tokens).items() if c > 1}


@given(st.text(alphabet=st.sampled_from("ab AB1é-É .\u00e0x"), max_size=80))
def test_stats_are_those_of_the_tokens_first_time_and_repeated(text: str) -> None:
    want = expected(text)
    for _ in range(2):  # computed, then (short texts) from the cache
        n, distinct, repeated = sqlite_fts._text_stats(text)
        assert (n, distinct, dict(repeated)) == want
        assert all(c > 1 for _, c in repeated)


def test_long_texts_are_not_kept_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache: dict[str, object] = {}
    monkeypatch.setattr(sqlite_fts, "_TEXT_STATS", cache)
    monkeypatch.setattr(sqlite_fts, "_TEXT_STATS_SIZE", 3)
    long_text = "word " * (sqlite_fts._TEXT_STATS_MAX_CHARS // 5 + 1)
    assert sqlite_fts._text_stats(long_text)[0] == len(text_tokens(long_text))
    assert long_text not in cache
    for i in range(3):
        sqlite_fts._text_stats(f"select {i} from t")
    assert len(cache) == 3
    sqlite_fts._text_stats("one more text")  # at the bound: emptied, then kept
    assert list(cache) == ["one more text"]
