"""`robofm-serve policy=PATH [host=127.0.0.1] [port=8000]`: a policy served over a websocket, for robots whose
control loop runs outside robofm and LeRobot (in the manner of openpi's WebsocketPolicyServer).

    robofm-serve policy=outputs/finetune port=8000            # one process holds the model

    with robofm.serve.Client("127.0.0.1", 8000) as policy:    # the robot's process: load_policy's interface
        policy.reset()
        action = policy.select_action({"images": {"corner2": img}, "state": state, "task": "open the door"})

Wire format: every websocket message is one binary msgpack frame; a numpy array anywhere in it travels as
{"__ndarray__": its bytes, "dtype": dtype.str, "shape": [...]} (openpi's msgpack_numpy convention). On connect the
server sends its metadata: {"cameras", "state_dim", "action_dim", "embodiment", "stride", "execute", "robofm"}.
Requests and their replies:

    {"type": "act", "observation": {"images": {...}, "state": ..., "task": str}}  ->  {"action": float32 [action_dim]}
    {"type": "reset"}                                                             ->  {"ok": true}
    anything malformed, or an observation load_policy would refuse               ->  {"error": "message"}

An error leaves the connection open and the episode as it was. Each connection is an episode of its own
(Policy.fork: the weights are shared, the history and the seeded generator are not), so concurrent robots do not
see each other's observations; a new connection starts as a freshly reset policy does. Inference runs in one worker
thread, one request at a time, off the event loop, so `GET /healthz` (200 "OK") and other connections are answered
while a chunk is predicted. The keys are ServeConfig's fields (`--help` lists them, `--cfg job` prints the resolved
config). Ctrl-C or SIGTERM stops it (open connections are closed with 1001, going away); exit status 2 on a usage
error or when the port is taken."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgpack
import numpy as np

from robofm.cli import parse_command
from robofm.errors import RobofmError, UsageError
from robofm.version import __version__

MAX_MESSAGE = 64 * 2**20  # bytes; a dozen 480x640 cameras fit (websockets' default of 1 MiB holds two 224x224)
log = logging.getLogger("robofm.serve")


# ------------------------------------------------------------------------------------------------ wire format


def pack(obj: Any) -> bytes:
    """obj -> one msgpack message; numpy arrays (and numpy scalars) anywhere in it as {"__ndarray__", dtype, shape}."""
    return msgpack.packb(obj, default=_encode)


def unpack(data: bytes) -> Any:
    """pack's inverse: the arrays come back as writable numpy arrays of their dtype and shape. Raises ValueError
    for bytes that are not such a message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(data, object_hook=_decode)
    except _MalformedArray:
        raise
    except Exception as e:  # msgpack's errors: ExtraData, FormatError, StackError, an unhashable key, ...
        raise ValueError(f"not a msgpack message ({type(e).__name__}{f': {e}' if str(e) else ''})") from None


class _MalformedArray(ValueError):
    pass


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"cannot send an array of dtype {obj.dtype}")
        return {"__ndarray__": np.ascontiguousarray(obj).tobytes(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot send {type(obj).__name__}")


def _decode(obj: dict) -> Any:
    if "__ndarray__" not in obj:
        return obj
    try:
        dtype = np.dtype(obj["dtype"])
        if dtype.hasobject:
            raise ValueError(f"dtype {dtype} holds Python objects")
        shape = tuple(int(n) for n in obj["shape"])
        return np.frombuffer(obj["__ndarray__"], dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as e:
        raise _MalformedArray(f"a malformed array (needs __ndarray__ bytes, dtype and shape that agree): {e}") from None


# ------------------------------------------------------------------------------------------------ server


class PolicyServer:
    """Serves `policy` on ws://host:port until stop() (or Ctrl-C under run()). port=0 takes a free port; `port`
    is the bound one once start() returns or the server is up."""

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.policy, self.host, self.port = policy, host, port
        self.metadata = {
            "cameras": list(policy.builder.cameras), "state_dim": policy.state_dim, "action_dim": policy.action_dim,
            "embodiment": policy.embodiment, "stride": policy.stride, "execute": policy.execute, "robofm": __version__,
        }  # fmt: skip
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="robofm-serve-inference")
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    async def serve(self, on_listening: Callable[[], None] | None = None) -> None:
        """Listen (then call on_listening), and answer connections until stop(). Raises OSError where host:port
        cannot be bound."""
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with serve(self._connection, self.host, self.port, process_request=_health, compression=None,
                             max_size=MAX_MESSAGE) as server:  # fmt: skip
                self.port = server.sockets[0].getsockname()[1]
                self._ready.set()
                if on_listening is not None:
                    on_listening()
                await self._stop.wait()
        finally:
            self._worker.shutdown(wait=True, cancel_futures=True)

    def start(self, timeout: float = 30.0) -> PolicyServer:
        """Serve from a daemon thread; returns once listening (raises what binding raised, or TimeoutError)."""
        self._thread = threading.Thread(target=self._run_in_thread, name="robofm-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) and self._failure is None:
            raise TimeoutError(f"robofm-serve did not start listening within {timeout} s")
        if self._failure is not None:
            raise self._failure
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Close every connection and the listening socket, and wait for the serving thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run_in_thread(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:  # noqa: BLE001 -- start() re-raises it in the caller's thread
            self._failure = e
            self._ready.set()

    async def _connection(self, ws) -> None:
        """One client: the metadata, then a reply to every request in order, on an episode of its own."""
        from websockets.exceptions import ConnectionClosed

        episode = self.policy.fork()
        try:
            await ws.send(pack(self.metadata))
            async for message in ws:
                await ws.send(pack(await self._answer(episode, message)))
        except ConnectionClosed:
            pass

    async def _answer(self, episode, message: Any) -> dict:
        try:
            request = unpack(message)
        except ValueError as e:
            return {"error": str(e)}
        kind = request.get("type") if isinstance(request, dict) else None
        if kind == "reset":
            episode.reset()
            return {"ok": True}
        if kind != "act":
            got = f"type {kind!r}" if isinstance(request, dict) else type(request).__name__
            return {"error": f'a request is {{"type": "act", "observation": {{...}}}} or {{"type": "reset"}}; got {got}'}
        if "observation" not in request:
            return {"error": 'an "act" request needs "observation": {"images": {...}, "state": [...], "task": str}'}
        try:
            action = await asyncio.get_running_loop().run_in_executor(self._worker, episode.select_action,
                                                                      request["observation"])  # fmt: skip
        except UsageError as e:
            return {"error": str(e)}
        except Exception as e:  # a bug or an observation the checks let through: the reply says so, the server stays up
            log.exception("robofm-serve: select_action failed")
            return {"error": f"select_action failed: {type(e).__name__}: {e}"}
        return {"action": action}


def _health(connection, request):
    """websockets' process_request: GET /healthz answers 200 OK over plain HTTP; every other path handshakes."""
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "OK\n")
    return None


# ------------------------------------------------------------------------------------------------ client


class Client:
    """A served policy with load_policy's interface: `select_action(observation) -> action [action_dim] float32`
    and `reset()`; `cameras`, `state_dim`, `action_dim`, `embodiment` and `stride` from the server's metadata.
    Errors the server replies with (a malformed observation) raise UsageError with its message, a server that is
    gone ConnectionError; every wait is bounded by `timeout` seconds (TimeoutError). Use it as a context manager,
    or close() it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, timeout: float | None = 60.0) -> None:
        from websockets.sync.client import connect

        self.url, self.timeout = f"ws://{host}:{port}", timeout
        try:
            self._ws = connect(self.url, open_timeout=timeout, compression=None, max_size=MAX_MESSAGE)
        except OSError as e:
            raise UsageError(f"cannot reach robofm-serve at {self.url}: {e}") from None
        self.metadata = unpack(self._ws.recv(timeout))
        self.cameras = tuple(self.metadata["cameras"])
        self.state_dim, self.action_dim = self.metadata["state_dim"], self.metadata["action_dim"]
        self.embodiment, self.stride = self.metadata["embodiment"], self.metadata["stride"]

    def select_action(self, observation: dict) -> np.ndarray:
        """The action [action_dim] (robot units) to execute now."""
        return self._request({"type": "act", "observation": observation})["action"]

    def reset(self) -> None:
        """Start an episode (the server's state for this connection: no history, the generator re-seeded)."""
        self._request({"type": "reset"})

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, request: dict) -> dict:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(pack(request))
            reply = unpack(self._ws.recv(self.timeout))
        except ConnectionClosed as e:
            raise ConnectionError(f"robofm-serve at {self.url} closed the connection ({e})") from None
        if "error" in reply:
            raise UsageError(reply["error"])
        return reply


# ------------------------------------------------------------------------------------------------ command line


@dataclass
class ServeConfig:
    """What `robofm-serve` serves: the keys of its command line."""

    policy: str = field(metadata={"help": "a run or export folder"})
    host: str = field(default="127.0.0.1", metadata={"help": "the address to listen on (0.0.0.0: every interface)"})
    port: int = field(default=8000, metadata={"help": "0: any free port"})
    embodiment: str | None = field(default=None, metadata={"help": "null: the one the policy was trained on"})
    execute: int | None = field(default=None, metadata={"help": "actions of a chunk played before predicting "
                                                                 "again; null: the whole chunk"})
    ensemble: float | None = field(default=None, metadata={"help": "temporal ensembling weight m; null: off"})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy action tokens"})
    seed: int = field(default=0, metadata={"help": "seeds each connection's sampling"})
    hide_past_actions: bool | None = field(default=None, metadata={"help": "predict without the executed actions "
                                                                           "in view; null: as trained"})
    device: str = field(default="cpu", metadata={"help": "cpu, cuda, cuda:1, ..."})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_command(ServeConfig, argv, prog="robofm-serve", description=__doc__)
    from robofm.policy import load_policy

    try:
        policy = load_policy(cfg.policy, embodiment=cfg.embodiment, execute=cfg.execute, ensemble=cfg.ensemble,
                             temperature=cfg.temperature, seed=cfg.seed, hide_past_actions=cfg.hide_past_actions,
                             device=cfg.device)  # fmt: skip
    except RobofmError as e:
        print(f"robofm-serve: error: {e}", file=sys.stderr)
        return 2
    server = PolicyServer(policy, cfg.host, cfg.port)

    def announce() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.stop)  # docker stop, systemd: as Ctrl-C
        url = f"{server.host}:{server.port}"
        print(f"robofm-serve: serving {cfg.policy} on ws://{url} (health: http://{url}/healthz)", flush=True)

    try:
        asyncio.run(server.serve(announce))
    except OSError as e:
        why = os.strerror(e.errno).lower() if e.errno else str(e)
        print(f"robofm-serve: error: cannot listen on {cfg.host}:{cfg.port}: {why}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    print("robofm-serve: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
