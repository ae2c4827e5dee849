"""A region node compiles its evaluation kernels before it serves, not in its first calls."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from nethical_grpc.jit import is_jit_available

CHECK = textwrap.dedent(
    """
    import asyncio
    from nethical_grpc.inference import features
    from region_node.model import ModelConfig
    from region_node.server import RegionServerConfig, start_region_server

    async def main():
        assert not features._features_kernel.signatures, "compiled before the node started"
        server, node = await start_region_server(
            RegionServerConfig(region_id="warm", model=ModelConfig())
        )
        try:
            assert features._features_kernel.signatures, "not compiled by the start"
            assert node.store.series_count == 0, "the warm-up touched the node's windows"
        finally:
            await server.drain(announce_s=0, grace_s=0)

    asyncio.run(main())
    print("ok")
    """
)


@pytest.mark.skipif(not is_jit_available(), reason="no JIT: nothing to compile")
def test_the_feature_kernel_is_compiled_when_the_node_starts() -> None:
    # a fresh process: kernels compiled by earlier tests do not count
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
