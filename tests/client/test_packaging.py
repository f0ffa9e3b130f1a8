"""The thin client stays thin, and its public surface is explicit."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import bnserve.client


def test_importing_the_client_imports_neither_torch_nor_onnxruntime():
    code = (
        "import json, sys; import bnserve.client; from bnserve.client import Client, AsyncClient; "
        "heavy = {'torch', 'onnxruntime', 'onnx', 'sklearn', 'pydantic_settings', 'cryptography'}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_names_are_exactly_all():
    # Submodules are attributes too once imported (the CLI modules, by an earlier test that
    # ran `bnserve drift` in-process): only the names that are not modules are the API.
    public = {name for name, value in vars(bnserve.client).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert set(bnserve.client.__all__) == public
    for name in bnserve.client.__all__:
        assert getattr(bnserve.client, name) is not None
