"""Write episodes of a LeRobot dataset (default: the embedded MetaWorld demo) in the other layouts robofm-convert
reads, laid out as their recorders write them, so the converters can be checked on rendered robot data:

  OUT/aloha/episode_<i>.hdf5        ALOHA/ACT: /observations/qpos, /observations/qvel, /observations/images/<cam>,
                                    /action, attribute sim; every other file JPEG-compressed (`compress`, /compress_len)
  OUT/robomimic/demos.hdf5          robomimic: data/demo_<i>/{obs/<key>, actions}, data attrs env_args and total,
                                    mask/train and mask/valid
  OUT/video/episode_<i>/            one mp4 per camera, telemetry.csv at twice the video rate, task.txt

    python scripts/export_demo_formats.py --out outputs/formats --episodes 20
    robofm-convert hdf5 outputs/formats/aloha --layout aloha --out outputs/formats/store-aloha
    robofm-convert hdf5 outputs/formats/robomimic --layout robomimic --out outputs/formats/store-robomimic
    robofm-convert video outputs/formats/video --out outputs/formats/store-video
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import av
import cv2
import h5py
import numpy as np
import pandas as pd

from robofm.data.sources.lerobot import LeRobotSource


def write_aloha(path: Path, ep, compress: bool) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["sim"] = True
        f.attrs["compress"] = compress
        f.attrs["task"] = ep.task
        obs = f.create_group("observations")
        obs["qpos"] = ep.state
        obs["qvel"] = np.gradient(ep.state, axis=0)
        images = obs.create_group("images")
        for cam, frames in ep.frames.items():
            if not compress:
                images.create_dataset(cam, data=frames, chunks=(1, *frames.shape[1:]))
                continue
            encoded = [cv2.imencode(".jpg", fr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1] for fr in frames]
            rows = np.zeros((len(encoded), max(len(e) for e in encoded)), np.uint8)
            for i, e in enumerate(encoded):
                rows[i, : len(e)] = e
            images[cam] = rows
            f[f"compress_len/{cam}"] = np.array([len(e) for e in encoded])
        f["action"] = ep.action


def write_robomimic(path: Path, episodes: list, val_every: int = 5) -> None:
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "MetaWorldMT10", "type": 1, "env_kwargs": {}})
        data.attrs["total"] = sum(ep.length for ep in episodes)
        names = []
        for i, ep in enumerate(episodes):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = ep.length
            demo["obs/robot0_eef_pos"] = ep.state[:, :3]
            demo["obs/robot0_gripper_qpos"] = ep.state[:, 3:]
            for cam, frames in ep.frames.items():
                demo[f"obs/{cam}_image"] = frames
            demo["actions"] = ep.action
            names.append(f"demo_{i}")
        f["mask/valid"] = np.array([n for i, n in enumerate(names) if i % val_every == 0], dtype="S")
        f["mask/train"] = np.array([n for i, n in enumerate(names) if i % val_every != 0], dtype="S")


def write_video_episode(folder: Path, ep, fps: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for cam, frames in ep.frames.items():
        with av.open(str(folder / f"{cam}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=int(fps))
            stream.height, stream.width = frames.shape[1:3]
            stream.pix_fmt = "yuv420p"
            for fr in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    t = ep.timestamp - ep.timestamp[0]
    fine = np.linspace(0, t[-1], 2 * len(t) - 1)  # telemetry at twice the video rate, covering every frame
    table = {"timestamp": fine}
    for name, arr in (("state", ep.state), ("action", ep.action)):
        for d in range(arr.shape[1]):
            table[f"{name}_{d}"] = np.interp(fine, t, arr[:, d])
    pd.DataFrame(table).to_csv(folder / "telemetry.csv", index=False)
    (folder / "task.txt").write_text(ep.task + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", default="datasets/metaworld_mt10", help="LeRobot dataset folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--episodes", type=int, default=20, help="first N episodes, spread over the tasks")
    args = p.parse_args()
    source = LeRobotSource(args.src)
    refs = source.episodes()
    step = max(1, len(refs) // args.episodes)
    episodes = [source.load(r) for r in refs[::step][: args.episodes]]
    (args.out / "aloha").mkdir(parents=True, exist_ok=True)
    for i, ep in enumerate(episodes):
        write_aloha(args.out / "aloha" / f"episode_{i}.hdf5", ep, compress=i % 2 == 1)
        write_video_episode(args.out / "video" / f"episode_{i:03d}", ep, source.fps)
    (args.out / "robomimic").mkdir(parents=True, exist_ok=True)
    write_robomimic(args.out / "robomimic" / "demos.hdf5", episodes)
    print(f"wrote {len(episodes)} episodes in 3 layouts under {args.out}")


if __name__ == "__main__":
    main()
