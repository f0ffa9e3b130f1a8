"""Generate the Python protocol stubs from the .proto files here (``make proto``).

protoc is run with the virtual include path ``bnserve/proto`` so that the generated
``*_pb2_grpc.py`` imports ``bnserve.proto.open_inference_pb2`` rather than a top-level
module; the files are generated into a scratch folder and then copied next to the .proto.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PROTO_FILES = ("model_config.proto", "open_inference.proto", "monitor.proto")
VIRTUAL_ROOT = "bnserve/proto"


def generated_names() -> list[str]:
    names = []
    for proto in PROTO_FILES:
        stem = Path(proto).stem
        names += [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    return names


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules into ``out_dir``; return their paths."""
    from grpc_tools import protoc  # dev-only dependency, imported here on purpose

    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "protoc",
            f"-I{VIRTUAL_ROOT}={PROTO_DIR}",
            f"-I{include}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(f"{VIRTUAL_ROOT}/{name}" for name in PROTO_FILES),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in generated_names():
            target = out_dir / name
            shutil.copyfile(Path(scratch) / VIRTUAL_ROOT / name, target)
            written.append(target)
    return written


def main() -> int:
    for path in generate(PROTO_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
