"""Headless OpenGL for MuJoCo: which MUJOCO_GL backend renders off screen on this machine.

MuJoCo reads MUJOCO_GL once, when it is first imported, and a backend whose system library is missing fails inside
that import (osmesa without libOSMesa: "'NoneType' object has no attribute 'glGetError'"). So each backend is tried
in a subprocess that renders one small frame, and the verdict is cached for the process. On a machine without a
GPU, Mesa's OSMesa (package libosmesa6) and Mesa's EGL (libegl-mesa0, surfaceless llvmpipe; Debian's GL stack
brings it) render the same pixels; with a CUDA GPU, EGL is the NVIDIA driver's.

`python -m robofm.sim.gl` prints the backend that renders (exit 0) or why none does (exit 1; 2 without MuJoCo);
`make` runs it to decide whether to install libosmesa6.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from robofm.errors import HeadlessGLError, RobofmError, UsageError

OSMESA_PACKAGE = "libosmesa6"
INSTALL_OSMESA = f"apt-get install -y {OSMESA_PACKAGE}"
# What each backend needs from the system, as Debian/Ubuntu name it.
NEEDS = {
    "osmesa": "libosmesa6",
    "egl": "libegl1 and libegl-mesa0 (or a GPU driver's EGL)",
    "glfw": "a display (DISPLAY) and libgl1",
}
PROBE_TIMEOUT_S = 120

# Renders one 8x8 frame with the MUJOCO_GL of its environment; prints why not and exits 1 on failure.
_PROBE = """
import sys
try:
    import mujoco
    model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom type='sphere' size='0.1'/></worldbody></mujoco>")
    renderer = mujoco.Renderer(model, 8, 8)
    renderer.update_scene(mujoco.MjData(model))
    renderer.render()
    renderer.close()
except Exception as e:
    print(f"{type(e).__name__}: {e}".splitlines()[0])
    sys.exit(1)
"""

_verdicts: dict[str, str | None] = {}  # backend -> None when it renders, else why not
_chosen: str | None = None  # the MUJOCO_GL that use_headless_gl set, as opposed to one the user set


def candidates() -> list[str]:
    """The backends tried, in order, when MUJOCO_GL is not set: egl first with a CUDA GPU, osmesa first otherwise."""
    import torch

    return ["egl", "osmesa"] if torch.cuda.is_available() else ["osmesa", "egl"]


def find_backend() -> str:
    """The MUJOCO_GL backend that renders off screen here: MUJOCO_GL itself when the user set it (checked, never
    replaced), else the first of candidates() that renders. Probes run in subprocesses, so a missing library never
    crashes this process; verdicts are cached for the process.

    Raises HeadlessGLError naming the missing system package and the command that installs it, or UsageError
    when MuJoCo itself (the sim extra) is not installed."""
    if importlib.util.find_spec("mujoco") is None:
        raise UsageError("rendering needs MuJoCo, from the sim extra: pip install 'robofm[sim]'")
    requested = os.environ.get("MUJOCO_GL")
    if requested is not None and requested != _chosen:
        reason = _verdict(requested)
        if reason is None:
            return requested
        install = "install it" if requested == "osmesa" else "unset MUJOCO_GL to let robofm choose, or install OSMesa"
        raise HeadlessGLError(
            f"MUJOCO_GL={requested} cannot render here: it needs {NEEDS.get(requested, 'one of egl, osmesa, glfw')} "
            f"({reason}); {install}: {INSTALL_OSMESA} (as root)"
        )
    reasons = {}
    for backend in candidates():
        reasons[backend] = _verdict(backend)
        if reasons[backend] is None:
            return backend
    tried = "; ".join(f"MUJOCO_GL={b}: {r}" for b, r in reasons.items())
    raise HeadlessGLError(
        f"MuJoCo cannot render off screen here: neither OSMesa nor EGL works ({tried}). Install "
        f"OSMesa, the system package {OSMESA_PACKAGE}: {INSTALL_OSMESA} (as root)"
    )


def use_headless_gl() -> str | None:
    """Set MUJOCO_GL to find_backend()'s answer unless the environment already chose, and PYOPENGL_PLATFORM to
    match unless set. Takes effect only before mujoco is first imported. Returns MUJOCO_GL, or None when no backend
    renders (find_backend() then raises why)."""
    global _chosen
    if "MUJOCO_GL" not in os.environ:
        try:
            _chosen = os.environ["MUJOCO_GL"] = find_backend()
        except RobofmError:
            return None
    backend = os.environ["MUJOCO_GL"]
    if backend in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


def _verdict(backend: str) -> str | None:
    if backend not in _verdicts:
        _verdicts[backend] = _probe(backend)
    return _verdicts[backend]


def _probe(backend: str) -> str | None:
    """None when MuJoCo renders a frame with MUJOCO_GL=backend in a fresh interpreter, else why not (one line)."""
    env = {**os.environ, "MUJOCO_GL": backend}
    if backend in ("osmesa", "egl"):
        env["PYOPENGL_PLATFORM"] = os.environ.get("PYOPENGL_PLATFORM", backend)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"rendering one frame took over {PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    lines = (proc.stdout.strip() or proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()
    return lines[-1]


def main() -> int:
    """Prints the backend that renders and returns 0; else prints why and returns 1 (no GL backend) or 2 (no MuJoCo)."""
    try:
        backend = find_backend()
    except HeadlessGLError as e:
        print(f"robofm.sim.gl: {e}", file=sys.stderr)
        return 1
    except RobofmError as e:
        print(f"robofm.sim.gl: {e}", file=sys.stderr)
        return 2
    print(backend)
    return 0


if __name__ == "__main__":
    sys.exit(main())
