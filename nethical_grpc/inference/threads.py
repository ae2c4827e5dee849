"""How many CPU threads the numeric libraries under a region node may use.

NumPy's BLAS, Numba's parallel kernels and PyTorch each size a thread pool from the
host's cores. A region node already runs its event loop, gRPC's threads and a store
writer; on a small or shared host (a pod with a CPU quota, this project's 2-core
machine) extra pools make every small model call and feature batch wake threads that
fight for the same cores. Measured here: one-action EvaluateStream messages went from
641 to 6,378 actions/s on an in-process node with BLAS and Numba held to one thread.

:func:`limit_threads` holds all three to ``n`` for the rest of the process (Numba's
setting applies to the calling thread, the one that runs the kernels: the event loop).
What it could not limit is reported, never raised: the node runs either way.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from nethical_grpc.jit import is_jit_available

log = logging.getLogger(__name__)

# the threadpoolctl limiter must stay referenced: it holds the BLAS limit
_held: list[Any] = []


def limit_threads(n: int) -> dict[str, str]:
    """Hold BLAS, Numba and (when imported) PyTorch to ``n`` threads; returns what each
    library was set to, or why not."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"thread count must be an int >= 1, got {n!r}")
    done: dict[str, str] = {}
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        done["blas"] = "not limited (threadpoolctl not installed)"
    else:
        _held.append(threadpool_limits(limits=n, user_api="blas"))
        done["blas"] = str(n)
    if is_jit_available():
        import numba

        most = int(getattr(numba.config, "NUMBA_NUM_THREADS", n))
        numba.set_num_threads(min(n, most))
        done["numba"] = str(numba.get_num_threads())
    else:
        done["numba"] = "not used"
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
        done["torch"] = str(n)
    log.debug("CPU threads per library: %s", done)
    return done
