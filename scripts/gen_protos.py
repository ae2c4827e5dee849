"""Regenerate the committed gRPC/protobuf stubs from protos/.

Usage: python scripts/gen_protos.py [--out DIR]

Writes nethical_grpc/v1/*_pb2.py, *_pb2_grpc.py and *_pb2.pyi, and
nethical_grpc/v1/descriptors.binpb: the files' descriptors with their comments (source
info), which server reflection serves so that grpcurl's ``describe`` shows them. The
drift test runs this into a temporary directory and compares with the committed files.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
DESCRIPTORS = Path("nethical_grpc") / "v1" / "descriptors.binpb"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "nethical_grpc" / "v1").glob("*.proto"))


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    (out_dir / DESCRIPTORS).parent.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={out_dir / DESCRIPTORS}",
        "--include_source_info",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = out_dir / "nethical_grpc" / "v1"
    init = package_dir / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated protobuf and gRPC stubs (do not edit)."""\n')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: repo)")
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
