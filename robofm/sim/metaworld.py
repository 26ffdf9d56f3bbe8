"""MetaWorld for robofm: the demo tasks, their instructions, the cameras and renderer the demo data was recorded
with, and the split of MetaWorld's observation into the robot state robofm stores. Shared by
scripts/collect_metaworld.py (which records demonstrations) and robofm-eval-sim (which runs policies), so a
policy sees in simulation exactly what it was trained on. Needs the sim extra (`pip install robofm[sim]`).

Headless rendering: importing this module sets MUJOCO_GL, unless the environment already chose, to the backend
that renders here (robofm.sim.gl.find_backend: egl first with a CUDA GPU, osmesa first otherwise, each tried in a
subprocess). It only takes effect if this module is imported before mujoco (or metaworld) is: import it first, or
set MUJOCO_GL yourself. Where no backend renders, make_env and Renderer raise HeadlessGLError, whose message names
the system package to install (libosmesa6) and the command.
"""

from __future__ import annotations

import numpy as np

from robofm.errors import UsageError
from robofm.sim.gl import find_backend, use_headless_gl
from robofm.sim.tasks import HELD_OUT_TASKS, INSTRUCTIONS, MT10_TASKS, TASKS  # noqa: F401  (re-exported)

use_headless_gl()  # before anything imports mujoco


# Cameras. MetaWorld's fixed "corner*" cameras render upside down (their up axis points at the floor), so their
# images are rotated by 180 degrees (both axes flipped: a rotation, not a mirror). "corner2" is moved to
# (0.75, 0.075, 0.7) exactly like lerobot's MetaWorld eval env (lerobot/envs/metaworld.py) does, so policies
# trained on this view can be evaluated there; it looks at the table from the robot's right (+x). "left" is a free
# camera (not in MetaWorld's XML) looking at the workspace from the robot's left (-x), slightly in front of the
# base, so that what the arm or an object hides in one view is mostly visible in the other. "front" faces the
# robot across the table (it sees the backs of the door and drawer, so it is not a default).
CAMERAS = {
    "corner": dict(name="corner", rotate180=True),
    "corner2": dict(name="corner2", rotate180=True, pos=(0.75, 0.075, 0.7)),
    "corner4": dict(name="corner4", rotate180=True),
    "left": dict(lookat=(0.0, 0.65, 0.12), distance=1.1, azimuth=20.0, elevation=-35.0),
    "front": dict(lookat=(0.0, 0.65, 0.12), distance=1.2, azimuth=-90.0, elevation=-30.0),
}
SHADOW_MAP_SIZE = 1024  # MetaWorld's 4096 shadow map doubles software-GL render time for no visible gain at 96 px

STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_open"]
# Object quaternions as MetaWorld reports them: xyzw (scipy) for reach/push/pick-place/door/peg, wxyz (MuJoCo) for
# drawer-open/button, zeros for drawer-close/window-*.
ENV_STATE_NAMES = [*(f"{o}_{k}" for o in ("obj", "obj2") for k in ("x", "y", "z", "q0", "q1", "q2", "q3")),
                   "goal_x", "goal_y", "goal_z"]  # fmt: skip


class Renderer:
    """Offscreen renderer for one env: one mujoco.Renderer shared by all cameras of that env."""

    def __init__(self, env, cameras: list[str], size: int) -> None:
        find_backend()  # HeadlessGLError, naming the package to install, rather than a failure inside MuJoCo
        import mujoco

        self.env = env
        env.model.vis.quality.shadowsize = SHADOW_MAP_SIZE  # read when the GL context is created, just below
        self.renderer = mujoco.Renderer(env.model, size, size)
        self.views = {}
        for cam in cameras:
            spec = CAMERAS[cam]
            if "name" in spec:
                cam_id = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, spec["name"])
                if cam_id < 0:
                    raise RuntimeError(f"camera {spec['name']!r} is not in the MetaWorld model")
                if "pos" in spec:
                    env.model.cam_pos[cam_id] = spec["pos"]
                self.views[cam] = (cam_id, spec["rotate180"])
            else:
                free = mujoco.MjvCamera()
                free.type = mujoco.mjtCamera.mjCAMERA_FREE
                free.lookat[:] = spec["lookat"]
                free.distance, free.azimuth, free.elevation = spec["distance"], spec["azimuth"], spec["elevation"]
                self.views[cam] = (free, False)
        mujoco.mj_forward(env.model, env.data)  # cam_pos edits reach the camera frames only through mj_forward

    def render(self) -> dict[str, np.ndarray]:
        out = {}
        for cam, (camera, rotate) in self.views.items():
            self.renderer.update_scene(self.env.data, camera=camera)
            img = self.renderer.render()
            out[cam] = np.ascontiguousarray(img[::-1, ::-1] if rotate else img)
        return out

    def close(self) -> None:
        self.renderer.close()


def split_obs(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MetaWorld's 39-dim observation -> (state: hand xyz + gripper opening, environment state: both object poses
    and the goal, the 17 values of ENV_STATE_NAMES).

    obs[0:3] hand xyz (m), obs[3] gripper opening in [0, 1], obs[4:11] object pos xyz + quat, obs[11:18] a second
    object (zero where the task has one object: all but hammer, stick-pull and stick-push), obs[18:36] the same 18
    values one control step (12.5 ms) earlier (MetaWorld's frame stacking; dropped), obs[36:39] goal xyz (m)."""
    state = obs[0:4].astype(np.float32)
    env_state = np.concatenate([obs[4:18], obs[36:39]]).astype(np.float32)
    return state, env_state


def make_env(task: str, fps: float, max_frames: int):
    """(env, repeat): MetaWorld's env for `task` (set a layout with env.set_task(mt1_layouts(...)[i])) and how many
    12.5 ms simulator steps make one control step at `fps` (the demo data's 20 fps: 4); episodes are capped at
    `max_frames` control steps. Raises HeadlessGLError where MuJoCo cannot render (importing metaworld imports
    mujoco, which would fail inside), UsageError for an unknown task or an fps that is no whole number of simulator
    steps."""
    if task not in INSTRUCTIONS:
        raise UsageError(f"task {task!r} is not a MetaWorld v3 task; the tasks are {', '.join(TASKS)}")
    find_backend()
    try:
        import metaworld
    except ImportError as e:
        raise UsageError(f"MetaWorld is not installed: pip install 'robofm[sim]' ({e})") from e

    env = metaworld.MT1(task, seed=0).train_classes[task]()
    dt = float(env.model.opt.timestep) * env.frame_skip
    repeat = round(1.0 / (fps * dt))
    if repeat < 1 or abs(repeat * dt * fps - 1.0) > 1e-6:
        raise UsageError(f"{fps} fps is not a whole number of MetaWorld steps of {dt * 1000:.1f} ms")
    env.max_path_length = max_frames * repeat + 1  # our cap, not MetaWorld's 500-step limit
    return env, repeat


def mt1_layouts(task: str, seed: int) -> list:
    """The 50 goal/object layouts of MetaWorld's MT1 benchmark for `task` drawn with `seed`. A layout is named by
    (seed, index) into this list: what scripts/collect_metaworld.py records per episode (the `layout` feature,
    then the store's episode row) and what robofm-eval-sim skips when a training store used it."""
    import metaworld

    return metaworld.MT1(task, seed=seed).train_tasks
