"""Audit-search pieces without a store: the Numba/NumPy kernels agree, query terms and
page tokens behave."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nethical_grpc.jit import is_jit_available
from nethical_grpc.storage.audit import _kernels as k
from nethical_grpc.storage.audit.model import (
    AuditFilter,
    SearchQuery,
    fold_token,
    query_terms,
    text_tokens,
)
from nethical_grpc.storage.audit.paging import (
    PageCursor,
    decode_page_token,
    encode_page_token,
)
from nethical_grpc.storage.audit.sqlite_fts import fts5_match_expression

ints = st.lists(st.integers(min_value=-(2**62), max_value=2**62), max_size=200)


@settings(deadline=None)  # the first call compiles the kernel
@given(values=ints)
def test_parse_ints_paths_agree(values: list[int]) -> None:
    text = ",".join(str(v) for v in values)
    expected = np.asarray(values, dtype=np.int64)
    np.testing.assert_array_equal(k.parse_ints_numpy(text), expected)
    np.testing.assert_array_equal(k.parse_ints_numba(text), expected)


def test_parse_ints_empty() -> None:
    for fn in (k.parse_ints_numpy, k.parse_ints_numba):
        assert fn(None).size == 0 and fn("").size == 0


@st.composite
def scoring_inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 300))
    doc_len = np.asarray(draw(st.lists(st.integers(1, 500), min_size=n + 1, max_size=n + 1)))
    seqs = sorted(draw(st.sets(st.integers(1, n), min_size=1)))
    tf_seqs = sorted(draw(st.sets(st.integers(1, n))))
    tf_values = draw(st.lists(st.integers(2, 9), min_size=len(tf_seqs), max_size=len(tf_seqs)))
    return (
        np.asarray(seqs, np.int64),
        doc_len.astype(np.int32),
        np.asarray(tf_seqs, np.int64),
        np.asarray(tf_values, np.int64),
    )


@settings(max_examples=150, deadline=None)
@given(data=scoring_inputs(), idf=st.floats(0.01, 20.0))
def test_bm25_paths_agree(
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], idf: float
) -> None:
    cand, doc_len, tf_seqs, tf_values = data
    avg = float(doc_len[1:].mean())
    a = np.zeros(cand.size)
    b = np.zeros(cand.size)
    k.bm25_add_numpy(a, cand, doc_len, avg, idf, tf_seqs, tf_values, 1.2, 0.75)
    k.bm25_add_numba(b, cand, doc_len, avg, idf, tf_seqs, tf_values, 1.2, 0.75)
    np.testing.assert_allclose(a, b, rtol=1e-13, atol=0)
    # the formula, one record at a time
    tf_of = dict(zip(tf_seqs.tolist(), tf_values.tolist(), strict=True))
    for i, seq in enumerate(cand.tolist()):
        tf = tf_of.get(seq, 1)
        norm = 1.2 * (1 - 0.75 + 0.75 * doc_len[seq] / avg)
        assert math.isclose(a[i], idf * tf * 2.2 / (tf + norm), rel_tol=1e-12)


def test_bm25_rewards_frequency_and_brevity() -> None:
    doc_len = np.asarray([0, 3, 3, 10], np.int32)
    score = np.zeros(3)
    k.bm25_add(
        score, np.asarray([1, 2, 3]), doc_len, 5.0, 1.0, np.asarray([1]), np.asarray([2]), 1.2, 0.75
    )
    assert score[0] > score[1] > score[2]


def test_the_bound_kernels_follow_jit_availability() -> None:
    assert (k.parse_ints is k.parse_ints_numba) == is_jit_available()
    assert (k.bm25_add is k.bm25_add_numba) == is_jit_available()


@given(text=st.text(max_size=200))
def test_query_terms_are_alphanumeric_runs(text: str) -> None:
    runs = set(re.findall(r"[^\W_]+", text.lower()))
    if len(runs) > 32:
        with pytest.raises(ValueError, match="terms"):
            query_terms(text)
        return
    terms = query_terms(text)
    assert set(terms) == runs
    for t in terms:
        assert t and t == t.lower()
        assert all(ch.isalnum() for ch in t)
    assert len(set(terms)) == len(terms)
    expr = fts5_match_expression(terms)
    assert expr.count('"') == 2 * len(terms)  # one quoted string per term, nothing else


@given(
    text=st.one_of(
        st.text(st.characters(max_codepoint=127), max_size=300),
        st.text(st.sampled_from("aZ09_ -.\t\n\x00\x1c\x1f\x7f\"'*:()"), max_size=100),
        st.text(max_size=100),
    )
)
def test_text_tokens_are_the_lower_cased_alphanumeric_runs(text: str) -> None:
    # ASCII text takes a byte-table path; it must cut exactly where the expression does
    expected = [fold_token(t) for t in re.findall(r"[^\W_]+", text.lower())]
    assert text_tokens(text) == expected
    if len(dict.fromkeys(expected)) <= 32:
        assert list(query_terms(text)) == list(dict.fromkeys(re.findall(r"[^\W_]+", text.lower())))


def test_text_tokens_of_mixed_text() -> None:
    assert text_tokens("DROP_TABLE users;--Café 42x\x00ÉTÉ") == [
        "drop",
        "table",
        "users",
        "cafe",
        "42x",
        "ete",
    ]
    assert text_tokens("") == [] and text_tokens("__ --") == []


def test_query_terms_split_syntax() -> None:
    assert query_terms('stated_intent:"DROP" AND( users*') == (
        "stated",
        "intent",
        "drop",
        "and",
        "users",
    )
    assert query_terms("***") == () and query_terms(None) == ()
    assert fts5_match_expression(['a"b']) == '{stated_intent action_text} : ("a""b")'


@given(
    total=st.integers(0, 10**9),
    position=st.lists(
        st.one_of(
            st.integers(-(2**62), 2**62),
            st.floats(allow_nan=False, allow_infinity=False),
            st.text(max_size=20),
            st.none(),
        ),
        max_size=5,
    ),
    context=st.one_of(st.none(), st.text(max_size=50)),
)
def test_page_tokens_round_trip(total: int, position: list[object], context: str | None) -> None:
    query = SearchQuery(filter=AuditFilter(text="report", agent_id="a"), page_size=10)
    token = encode_page_token("memory", query, PageCursor(total, position, context))
    back = decode_page_token("memory", SearchQuery(filter=query.filter, page_token=token))
    assert back == PageCursor(total, position, context)
    with pytest.raises(ValueError, match="another"):
        decode_page_token("sqlite", SearchQuery(filter=query.filter, page_token=token))
    other = SearchQuery(filter=AuditFilter(text="report", agent_id="b"), page_token=token)
    with pytest.raises(ValueError, match="does not belong"):
        decode_page_token("memory", other)
