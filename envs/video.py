"""Encode rendered frames as an animated GIF or an MP4 video, returned as bytes (scripts write files).

GIF goes through imageio's Pillow plugin (looping forever; GIF stores frame durations in
hundredths of a second, and Pillow merges identical consecutive frames into one longer frame).
MP4 is H.264 through imageio-ffmpeg, which needs even sizes: frames with an odd height or width
get one edge row or column repeated.
"""
from __future__ import annotations

from typing import Sequence

import imageio.v3 as iio
import numpy as np

from treeworld import checks

FORMATS = ("gif", "mp4")


def encode_video(frames: Sequence[np.ndarray], fps: int, format: str) -> bytes:
    """``frames``: N >= 1 (H, W, 3) uint8 rgb arrays (or one (N, H, W, 3) array), played at
    ``fps`` frames per second; ``format``: "gif" or "mp4". Returns the encoded file's bytes."""
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {FORMATS}, got {format!r}")
    fps = checks.integer(fps, "fps", low=1)
    video = _stack(frames)  # (N, H, W, 3)
    if format == "gif":
        return iio.imwrite("<bytes>", video, extension=".gif", duration=1000.0 / fps, loop=0)
    pad = ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0))
    return iio.imwrite("<bytes>", np.pad(video, pad, mode="edge"), extension=".mp4", plugin="FFMPEG",
                       fps=fps, codec="libx264", macro_block_size=1)


def _stack(frames: Sequence[np.ndarray]) -> np.ndarray:
    """Check ``frames`` and stack them into one (N, H, W, 3) uint8 array."""
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise ValueError(f"frames: expected an (N, H, W, 3) array or a sequence of frames, got shape {frames.shape}")
        frames = list(frames)
    if not isinstance(frames, Sequence) or isinstance(frames, (str, bytes)):
        raise TypeError(f"frames: expected a sequence of (H, W, 3) uint8 arrays, got {type(frames).__name__}")
    if len(frames) == 0:
        raise ValueError("frames: expected at least one frame, got none")
    first = frames[0]
    for k, frame in enumerate(frames):
        if not isinstance(frame, np.ndarray):
            raise TypeError(f"frames: item {k} is a {type(frame).__name__}, expected a numpy array")
        if frame.dtype != np.uint8:
            raise ValueError(f"frames: expected dtype uint8, got {frame.dtype} at item {k}")
        if frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
            raise ValueError(f"frames: expected (H, W, 3) rgb frames, got shape {frame.shape} at item {k}")
        if frame.shape != first.shape:
            raise ValueError(f"frames: expected every frame of shape {first.shape}, got {frame.shape} at item {k}")
    return np.stack(frames)
