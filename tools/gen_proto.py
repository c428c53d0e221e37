"""Generate the Python gRPC stubs in proto/ from the .proto files there (`make proto`).

The .proto files are mapped to the virtual path `litelang/proto/` so the generated modules
import each other as `litelang.proto.x_pb2`, which is where they live once installed.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"
PROTO_FILES = ("litelang.proto", "worker.proto")


def generate(out_dir: Path) -> list[Path]:
    """Write x_pb2.py, x_pb2.pyi and x_pb2_grpc.py for each .proto file into out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-Ilitelang/proto={PROTO_DIR}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[f"litelang/proto/{name}" for name in PROTO_FILES],
        ]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed: " + " ".join(args))
        written = []
        for path in sorted((Path(tmp) / "litelang" / "proto").glob("*_pb2*")):
            target = out_dir / path.name
            shutil.copyfile(path, target)
            written.append(target)
        return written


def main() -> int:
    for path in generate(PROTO_DIR):
        print(f"wrote {path.relative_to(PROTO_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
