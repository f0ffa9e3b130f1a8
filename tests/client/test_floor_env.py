"""The thin client on its floor: grpcio, protobuf and numpy at the lowest versions
pyproject.toml allows, in an environment of their own with bnserve installed --no-deps
(.venv/floor, built by scripts/floor_env.py from scripts/floor-requirements.txt and reused
while those are unchanged), where the client's tests against the fake servicer must pass.
"""

from __future__ import annotations

import json
import re

import pytest

from bnserve.proto import generate
from support import floor

FLOORS = ("grpcio", "protobuf", "numpy")


def test_pyproject_floors_are_the_pinned_floor_versions(project_root):
    tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")
    with open(project_root / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    floors = dict(re.fullmatch(r"([a-z0-9_.-]+)>=([0-9.]+)", d.replace(" ", "")).groups()
                  for d in dependencies)
    pins = floor.pins()
    assert floors == {name: pins[name] for name in FLOORS}
    assert pins["grpcio-tools"] == generate.GRPCIO_TOOLS


def test_the_floor_environment_has_the_floors_and_the_client_needs_no_more():
    python = floor.floor_python()
    code = (
        "import json, sys; from importlib import metadata\n"
        "import bnserve.client, bnserve.client.predict_cli, bnserve.client.admin_cli\n"
        "from bnserve.proto import open_inference_pb2_grpc, monitor_pb2_grpc\n"
        "from google.protobuf.internal import api_implementation\n"
        f"versions = {{name: metadata.version(name) for name in {list(FLOORS)!r}}}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'onnxruntime', 'onnx', 'sklearn', 'pydantic_settings'})\n"
        "print(json.dumps({'versions': versions, 'heavy': heavy, "
        "'protobuf': api_implementation.Type()}))"
    )
    done = floor.run(python, "-c", code)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["versions"] == {name: floor.pins()[name] for name in FLOORS}
    assert found["heavy"] == [] and found["protobuf"] == "upb"
    # bnserve's own requirements (its installed metadata) admit the floor versions.
    check = floor.run(python, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_thin_clients_tests_pass_on_the_floor_versions():
    done = floor.run(floor.floor_python(), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     "tests/client/test_fake_servicer.py", "tests/proto/test_tokenizer.py",
                     timeout=300)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert re.fullmatch(r"\d+ passed in [\d.]+s( \(.*\))?", summary), summary
