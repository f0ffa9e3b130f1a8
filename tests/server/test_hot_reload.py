"""Hot reload under load: a real server in poll mode, clients sending requests the whole time.

v1 is replaced by v2 with zero failed requests, and each client's answers switch from v1's
to v2's once; then a broken v3 arrives and v2 goes on serving.
"""

from __future__ import annotations

import threading

import numpy as np

from bnserve.client import Client
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.server_thread import ServerThread
from support.waiting import wait_for

X = np.ones((1, 2), np.float32)
CLIENTS = 4


class LoadGenerator:
    """CLIENTS threads, each sending one request at a time and recording every answer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers: list[list[float]] = [[] for _ in range(CLIENTS)]
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def _run(self, index: int) -> None:
        with Client(self.address, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    y = client.infer("m", {"x": X})["y"]
                    self.answers[index].append(float(y[0, 0]))
                except Exception as exc:  # every failure counts; the test wants none
                    self.errors.append(repr(exc))

    def __enter__(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=20)

    def total(self) -> int:
        return sum(len(a) for a in self.answers)


def test_versions_swap_under_load_without_a_failed_request(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    settings = ServerSettings(repository=tmp_path, model_control_mode="poll",
                              repository_poll_secs=0.1, allow_unauthenticated_admin=True)
    with ServerThread(settings) as server, LoadGenerator(server.address) as load, \
            Client(server.address) as admin:
        wait_for(lambda: load.total() >= 20)
        onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
        wait_for(lambda: all(a and a[-1] == 2.0 for a in load.answers))
        wait_for(lambda: {(r.version, r.state) for r in admin.repository_index()}
                 == {("1", "UNAVAILABLE"), ("2", "READY")})
        swapped_at = load.total()

        (tmp_path / "m" / "3").mkdir()
        (tmp_path / "m" / "3" / "model.onnx").write_bytes(b"a broken upload")
        wait_for(lambda: any(r.version == "3" and r.reason.startswith("failed to load")
                             for r in admin.repository_index()))
        wait_for(lambda: load.total() >= swapped_at + 40)
    assert load.errors == []
    for answers in load.answers:
        first_v2 = answers.index(2.0)
        assert set(answers[:first_v2]) <= {1.0}  # v1 until the swap,
        assert set(answers[first_v2:]) == {2.0}  # then v2 only, through the broken v3
    assert sum(a.count(1.0) for a in load.answers) >= 20
    assert load.total() >= 80
