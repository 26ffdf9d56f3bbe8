"""Where MetaWorld's offscreen rendering spends its time: milliseconds per camera image under each render setting,
measured side by side in one process (the collector's bottleneck; see RESULTS.md, issue 22).

    .venv/bin/python benchmarks/render.py [--task reach-v3] [--camera corner2] [--images 30]

Each setting renders the same scene `--images` times after one warm-up image; the table gives ms per image and
its ratio to the collector's setting (`robofm.sim.metaworld.Renderer`: 96 px, a 1,024 px shadow map, shadows and
reflections on), and the PSNR of the setting's image against the collector's (how much the picture changes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import robofm.sim.metaworld as mw  # chooses MUJOCO_GL before mujoco is imported


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="reach-v3")
    p.add_argument("--camera", default="corner2", choices=sorted(name for name, c in mw.CAMERAS.items() if "name" in c))
    p.add_argument("--images", type=int, default=30)
    args = p.parse_args()
    import mujoco

    env, _ = mw.make_env(args.task, 20, 80)
    env.set_task(mw.mt1_layouts(args.task, 0)[0])
    env.reset()
    camera = mujoco.mj_name2id(env.model, mujoco.mjtObj.mjOBJ_CAMERA, mw.CAMERAS[args.camera]["name"])
    flags = mujoco.mjtRndFlag
    samples = int(env.model.vis.quality.offsamples)  # MuJoCo's multisampling of the offscreen buffer (4)
    settings = {  # name: (size, shadow map size, offscreen samples, {render flag: on})
        "as collected (96 px, shadow map 1024)": (96, mw.SHADOW_MAP_SIZE, samples, {}),
        "shadow map 256": (96, 256, samples, {}),
        "64 px": (64, mw.SHADOW_MAP_SIZE, samples, {}),
        "no multisampling": (96, mw.SHADOW_MAP_SIZE, 0, {}),
        "no shadows": (96, mw.SHADOW_MAP_SIZE, samples, {flags.mjRND_SHADOW: False}),
        "no shadows, no reflection": (96, mw.SHADOW_MAP_SIZE, samples, {flags.mjRND_SHADOW: False, flags.mjRND_REFLECTION: False}),
    }  # fmt: skip
    rows, reference = [], None
    for name, (size, shadow_map, offsamples, off) in settings.items():
        env.model.vis.quality.shadowsize = shadow_map  # both read when the GL context is created
        env.model.vis.quality.offsamples = offsamples
        renderer = mujoco.Renderer(env.model, size, size)
        image = _render(renderer, env, camera, off)
        start = time.perf_counter()
        for _ in range(args.images):
            _render(renderer, env, camera, off)
        ms = (time.perf_counter() - start) / args.images * 1000
        renderer.close()
        if reference is None:
            reference, base_ms = image, ms
        psnr = "" if image.shape != reference.shape else _psnr(reference, image)
        rows.append((name, ms, ms / base_ms, psnr))
    env.close()
    print(f"MUJOCO_GL={mw.find_backend()}, {args.task}, camera {args.camera}, {args.images} images per setting")
    print(f"{'setting':<40} {'ms/image':>9} {'ratio':>6} {'PSNR vs collected':>18}")
    for name, ms, ratio, psnr in rows:
        print(f"{name:<40} {ms:9.1f} {ratio:6.2f} {psnr:>18}")


def _render(renderer, env, camera: int, flags: dict) -> np.ndarray:
    renderer.update_scene(env.data, camera=camera)
    for flag, on in flags.items():
        renderer.scene.flags[flag] = on
    return renderer.render()


def _psnr(a: np.ndarray, b: np.ndarray) -> str:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return "identical" if mse == 0 else f"{10 * np.log10(255.0**2 / mse):.1f} dB"


if __name__ == "__main__":
    main()
