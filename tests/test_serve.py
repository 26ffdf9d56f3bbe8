"""robofm-serve: a client's actions are load_policy's, concurrent clients keep their own episodes, a malformed
request gets an error reply and the server keeps answering, and GET /healthz answers 200. Every server listens on
127.0.0.1 (an ephemeral port); every wait has a timeout, so a bug fails rather than hangs."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

import robofm
from robofm.errors import UsageError
from robofm.serve import Client, PolicyServer, main, pack, unpack
from tests.models.conftest import make_store
from tests.train.conftest import TINY, train_in_process

REPO = Path(__file__).resolve().parents[1]
WAIT = 60  # seconds: the bound on every wait


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    store = make_store(root / "store", n=4, length=16)
    train_in_process(root / "run", TINY + [f"data.path={store}", "trainer.max_steps=3"])
    return root / "run"


@pytest.fixture(scope="module")
def server(export):
    """A sampling policy (temperature 1), so that each connection's seeded generator shows in its actions."""
    with PolicyServer(robofm.load_policy(export, temperature=1.0, seed=3), "127.0.0.1", 0) as s:
        yield s


def observation(t: int, task: str = "pick", size=(30, 20)) -> dict:
    rng = np.random.default_rng(t)
    images = {cam: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for cam in ("front", "wrist")}
    return {"images": images, "state": np.array([t, 1.0, 0.0]), "task": task}


def alone(export, observations: list[dict]) -> list[np.ndarray]:
    policy = robofm.load_policy(export, temperature=1.0, seed=3)
    return [policy.select_action(o) for o in observations]


def test_arrays_round_trip_with_their_dtype_and_shape():
    arrays = [np.arange(12, dtype=np.uint8).reshape(2, 3, 2), np.float32(1.5) * np.ones((2, 2)).T[::-1],
              np.array(3.0), np.zeros((0, 4), np.int64), np.array([True, False])]  # fmt: skip
    message = {"a": arrays, "nested": {"x": arrays[1], "n": np.int64(7), "s": "text"}}
    back = unpack(pack(message))
    for sent, got in zip(arrays, back["a"], strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape and np.array_equal(got, sent)
        assert got.flags.writeable
    assert back["nested"]["n"] == 7 and back["nested"]["s"] == "text"
    with pytest.raises(TypeError):
        pack({"x": np.array([object()])})


def test_a_client_acts_as_load_policy_does(export, server):
    observations = [observation(t) for t in range(6)]
    expected = alone(export, observations)
    with Client("127.0.0.1", server.port, timeout=WAIT) as client:
        assert client.cameras == ("front", "wrist") and (client.state_dim, client.action_dim) == (3, 2)
        assert client.embodiment == "arm" and client.metadata["robofm"] == robofm.__version__
        got = [client.select_action(o) for o in observations]
        client.reset()
        again = [client.select_action(o) for o in observations]
    for a, b, c in zip(expected, got, again, strict=True):
        assert b.dtype == np.float32 and b.shape == (2,) and np.array_equal(a, b) and np.array_equal(a, c)


def test_concurrent_clients_each_get_their_own_episode(export, server):
    """Two clients with different observations, interleaved request by request and then in two threads at once,
    each get exactly the actions they would get alone."""
    runs = {"a": [observation(t) for t in range(6)], "b": [observation(100 + t, "place") for t in range(6)]}
    expected = {k: alone(export, obs) for k, obs in runs.items()}
    with Client("127.0.0.1", server.port, timeout=WAIT) as a, Client("127.0.0.1", server.port, timeout=WAIT) as b:
        got = {"a": [], "b": []}
        for oa, ob in zip(runs["a"], runs["b"], strict=True):
            got["a"].append(a.select_action(oa))
            got["b"].append(b.select_action(ob))
    assert all(np.array_equal(x, y) for k in runs for x, y in zip(expected[k], got[k], strict=True))

    def episode(observations: list[dict]) -> list[np.ndarray]:
        with Client("127.0.0.1", server.port, timeout=WAIT) as client:
            return [client.select_action(o) for o in observations]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(episode, obs) for k, obs in runs.items()}
        threaded = {k: f.result(timeout=WAIT) for k, f in futures.items()}
    assert all(np.array_equal(x, y) for k in runs for x, y in zip(expected[k], threaded[k], strict=True))


BAD_ARRAY = {"__ndarray__": b"123", "dtype": "<f4", "shape": [2]}


@pytest.mark.parametrize(("message", "error"), [
    (b"\xc1", "not a msgpack message"),
    ("a text frame", "expected a binary msgpack frame"),
    (pack([1, 2]), "a request is"),
    (pack({"type": "fly"}), "got type 'fly'"),
    (pack({"type": "act"}), 'needs "observation"'),
    (pack({"type": "act", "observation": {"images": {}, "state": [0, 0, 0]}}), "observation must be"),
    (pack({"type": "act", "observation": {**observation(0), "state": [0, 0]}}), "state must be 3 finite numbers"),
    (pack({"type": "act", "observation": {**observation(0), "images": [1]}}), "images must be a dict"),
    (pack({"type": "act", "observation": {**observation(0), "images": {"front": np.zeros((8, 8), np.uint8),
                                                                       "wrist": np.zeros((8, 8, 3), np.uint8)}}}),
     "images['front'] must be HxWx3 uint8"),
    (msgpack.packb({"type": "act", "observation": {"state": BAD_ARRAY}}), "a malformed array"),
    (msgpack.packb({"type": "act", "observation": {"state": {**BAD_ARRAY, "dtype": "O"}}}), "a malformed array"),
])  # fmt: skip
def test_a_malformed_request_gets_an_error_and_the_episode_goes_on(export, server, message, error):
    """The error arrives on the same connection, which then acts as a fresh episode would: the bad request left
    no trace in its history."""
    with connect(f"ws://127.0.0.1:{server.port}", open_timeout=WAIT, compression=None) as ws:
        unpack(ws.recv(WAIT))  # the metadata
        ws.send(message)
        reply = unpack(ws.recv(WAIT))
        assert error in reply["error"]
        ws.send(pack({"type": "act", "observation": observation(0)}))
        assert np.array_equal(unpack(ws.recv(WAIT))["action"], alone(export, [observation(0)])[0])


def test_the_client_raises_the_servers_error_and_the_health_check_answers(server):
    with Client("127.0.0.1", server.port, timeout=WAIT) as client:
        with pytest.raises(UsageError, match="state must be 3 finite numbers"):
            client.select_action({**observation(0), "state": [0, 0]})
        assert client.select_action(observation(0)).shape == (2,)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=WAIT) as reply:
            assert reply.status == 200 and reply.read().strip() == b"OK"
    with pytest.raises(UsageError, match="cannot reach robofm-serve"):
        Client("127.0.0.1", _free_port(), timeout=WAIT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_in_use_is_one_line_and_exit_2(export, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main([f"policy={export}", f"port={taken.getsockname()[1]}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("robofm-serve: error: cannot listen on 127.0.0.1:")


def _sigint_as_from_a_terminal() -> None:
    """In the child, before exec: SIGINT handled by default, as when robofm-serve is started from a terminal. A
    shell starts a background job with SIGINT ignored, and an ignored signal is inherited: pytest run as `... &`
    (a CI script in the background) would otherwise hand that on, and robofm-serve, rightly, would not stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_the_command_serves_until_ctrl_c(export):
    """`robofm-serve` in its own process: the line it prints, a client, and a clean exit on SIGINT."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robofm.serve", f"policy={export}", "port=0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_sigint_as_from_a_terminal)  # fmt: skip
    watchdog = threading.Timer(3 * WAIT, proc.kill)  # bounds readline below: a killed process gives EOF
    watchdog.start()
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"robofm-serve: serving {export} on ws://127.0.0.1:"), proc.stderr.read()
        port = int(line.split("ws://127.0.0.1:")[1].split()[0])
        with Client("127.0.0.1", port, timeout=WAIT) as client:
            assert client.select_action(observation(0)).shape == (2,)
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(WAIT) == 0
        except subprocess.TimeoutExpired:  # its signal masks, for the report
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines() if sys.platform == "linux" else []
            pytest.fail(f"robofm-serve ignored SIGINT for {WAIT} s: {[x for x in status if x.startswith('Sig')]}")
        assert "robofm-serve: stopped" in proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(WAIT)


def test_the_health_check_answers_while_a_client_waits_on_inference(export, server, monkeypatch):
    """Inference runs off the event loop: /healthz answers while a request is held inside select_action."""
    import robofm.policy as module

    entered, release = threading.Event(), threading.Event()
    real = module.predict_action_chunk

    def held(*a, **k):
        entered.set()
        release.wait(WAIT)
        return real(*a, **k)

    monkeypatch.setattr(module, "predict_action_chunk", held)
    with Client("127.0.0.1", server.port, timeout=WAIT) as client, concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.select_action, observation(0))
        try:
            assert entered.wait(WAIT)
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=WAIT) as reply:
                assert reply.status == 200 and not pending.done()
        finally:
            release.set()
        assert pending.result(timeout=WAIT).shape == (2,)


def test_a_stopped_server_closes_its_connections(export):
    """stop() closes open connections (1001, going away): the client raises ConnectionError instead of waiting."""
    server = PolicyServer(robofm.load_policy(export), "127.0.0.1", 0).start()
    with Client("127.0.0.1", server.port, timeout=WAIT) as client:
        assert client.select_action(observation(0)).shape == (2,)
        server.stop()
        with pytest.raises(ConnectionError, match="closed the connection"):
            client.select_action(observation(1))
