"""limit_threads holds the numeric libraries' pools to the node's thread count."""

from __future__ import annotations

import numpy as np
import pytest
import threadpoolctl

from nethical_grpc.inference import threads
from nethical_grpc.jit import is_jit_available


def _blas_threads() -> set[int]:
    return {
        int(i["num_threads"]) for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
    }


def test_blas_and_numba_pools_are_held_to_the_limit() -> None:
    np.dot(np.ones((4, 4)), np.ones((4, 4)))  # BLAS loaded
    numba = pytest.importorskip("numba") if is_jit_available() else None
    before_numba = numba.get_num_threads() if numba is not None else None
    try:
        done = threads.limit_threads(1)
        assert done["blas"] == "1"
        assert _blas_threads() == {1}
        if numba is not None:
            assert done["numba"] == "1" and numba.get_num_threads() == 1
        else:
            assert done["numba"] == "not used"
    finally:
        threads._held.pop().restore_original_limits()
        if numba is not None and before_numba is not None:
            numba.set_num_threads(before_numba)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_bad_thread_count_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="thread count"):
        threads.limit_threads(bad)  # type: ignore[arg-type]
