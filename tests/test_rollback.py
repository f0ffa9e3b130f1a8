"""The README's "Versions, rollout and rollback" walk-through, command by command.

A server in poll mode; `bnserve recalibrate` publishes version 2; a config.pbtxt pins what
clients get, rolls version 2 out beside version 1, and rolls back; then the same rollback
through the repository API of a server in explicit mode.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from bnserve.client import Client
from support.cli import run_cli
from support.subprocess_server import SubprocessServer
from support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]



def served_versions(client: Client) -> tuple[str, ...]:
    return client.metadata("digits").versions


def test_pin_roll_out_and_roll_back_with_the_readmes_commands(digits_repository, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(digits_repository, models)
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_shifted_digits.py"), tmp_path],
                   check=True, capture_output=True, timeout=120)
    token = tmp_path / "admin.token"
    token.write_text("change-me\n")
    x = np.load(tmp_path / "shifted_test.npz")["x"][:8]
    config = models / "digits" / "config.pbtxt"

    with SubprocessServer(models, "--model-control-mode", "poll", "--repository-poll-secs",
                          "0.2", "--admin-token-file", str(token)) as server, \
            Client(server.address, admin_token="change-me") as client:
        assert served_versions(client) == ("1",)
        published = run_cli("--log-level", "WARNING", "recalibrate", "--model", "digits",
                            "--data", tmp_path / "shifted.npz", "--repository", models,
                            check=True).stdout
        assert "published digits version 2" in published
        assert "with no config.pbtxt, a server serves the highest version" in published
        wait_for(lambda: served_versions(client) == ("2",))  # the default: latest 1

        config.write_text("version_policy { specific { versions: [1] } }\n")  # pin version 1
        wait_for(lambda: served_versions(client) == ("1",))
        config.write_text("version_policy { specific { versions: [1, 2] } }\n")  # roll out
        wait_for(lambda: served_versions(client) == ("1", "2"))
        v1 = client.predict("digits", x, version="1")
        v2 = client.predict("digits", x, version="2")
        assert not np.array_equal(v1, v2)  # recalibrated statistics answer differently
        np.testing.assert_array_equal(client.predict("digits", x), v2)  # "": the highest
        config.write_text("version_policy { specific { versions: [1] } }\n")  # roll back
        wait_for(lambda: served_versions(client) == ("1",))
        np.testing.assert_array_equal(client.predict("digits", x), v1)
        index = run_cli("repository", "index", "--address", server.address,
                        "--admin-token-file", token, check=True).stdout
        assert "READY" in index and "is not selected by the version policy (specific 1)" in index

    config.unlink()
    pin = tmp_path / "pin-1.json"
    pin.write_text('{"version_policy": {"specific": {"versions": [1]}}}\n')
    with SubprocessServer(models, "--model-control-mode", "explicit", "--load-model", "digits",
                          "--admin-token-file", str(token)) as server, \
            Client(server.address) as client:
        assert served_versions(client) == ("2",)
        loaded = run_cli("repository", "load", "digits", "--config", pin, "--address",
                         server.address, "--admin-token-file", token, check=True).stdout
        assert loaded.strip() == "loaded digits: ready versions 1"
        assert served_versions(client) == ("1",)
        np.testing.assert_array_equal(client.predict("digits", x), v1)
