"""Pure box and projection geometry for 2D detections, crops and LiDAR-in-box statistics.

Boxes are ``(x1, y1, x2, y2)`` in pixels, ``x2``/``y2`` exclusive edges as ultralytics reports
them. 3D work goes through the nuscenes-devkit (``view_points``, ``transform_matrix``) so the
conventions are the dataset's own; the devkit is imported by the functions that use it (its
package imports matplotlib, OpenCV and scikit-learn, too slow for loading the code location).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pyquaternion import Quaternion

Box2D = tuple[float, float, float, float]


def clip_box(box: Sequence[float], width: int, height: int) -> Box2D:
    """``box`` clipped to the ``width`` x ``height`` image."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


def crop_window(box: Sequence[float], pad_frac: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer crop window around ``box``, padded by ``pad_frac`` of its size per side, inside the image."""
    x1, y1, x2, y2 = box
    px, py = (x2 - x1) * pad_frac, (y2 - y1) * pad_frac
    return (
        max(0, int(np.floor(x1 - px))),
        max(0, int(np.floor(y1 - py))),
        min(width, int(np.ceil(x2 + px))),
        min(height, int(np.ceil(y2 + py))),
    )


def project_corners(corners: np.ndarray, intrinsic: np.ndarray, width: int, height: int) -> Box2D | None:
    """2D extent of 3D box corners ``(3, 8)`` given in the camera frame, clipped to the image.

    Corners behind the camera (depth <= 0) are left out, as in the devkit's 2D-annotation export;
    None when no corner is in front of the camera.
    """
    from nuscenes.utils.geometry_utils import view_points

    in_front = corners[:, corners[2] > 0]
    if in_front.shape[1] == 0:
        return None
    uv = view_points(in_front, intrinsic, normalize=True)[:2]
    return clip_box((uv[0].min(), uv[1].min(), uv[0].max(), uv[1].max()), width, height)


def lidar_to_camera_matrix(
    lidar_sensor2ego: tuple[Sequence[float], Sequence[float]],
    lidar_ego2global: tuple[Sequence[float], Sequence[float]],
    cam_ego2global: tuple[Sequence[float], Sequence[float]],
    cam_sensor2ego: tuple[Sequence[float], Sequence[float]],
) -> np.ndarray:
    """4x4 matrix taking LiDAR points to the camera frame: lidar → ego → global → ego (camera time) → camera.

    Each argument is ``(translation, quaternion w x y z)`` from the calibrated_sensor / ego_pose
    records, the chain of the devkit's ``NuScenesExplorer.map_pointcloud_to_image``.
    """
    from nuscenes.utils.geometry_utils import transform_matrix

    def pose(tq: tuple[Sequence[float], Sequence[float]], inverse: bool) -> np.ndarray:
        return transform_matrix(np.asarray(tq[0], dtype=float), Quaternion(list(tq[1])), inverse=inverse)

    return (
        pose(cam_sensor2ego, True)
        @ pose(cam_ego2global, True)
        @ pose(lidar_ego2global, False)
        @ pose(lidar_sensor2ego, False)
    )


def project_points(
    points_cam: np.ndarray, intrinsic: np.ndarray, width: int, height: int, min_depth: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates ``(2, m)`` and depths ``(m,)`` of camera-frame points ``(3, n)`` that lie
    more than ``min_depth`` metres in front of the camera and inside the image."""
    from nuscenes.utils.geometry_utils import view_points

    depth = points_cam[2]
    front = depth > min_depth
    uv = view_points(points_cam[:, front], intrinsic, normalize=True)[:2]
    inside = (uv[0] >= 0) & (uv[0] < width) & (uv[1] >= 0) & (uv[1] < height)
    return uv[:, inside], depth[front][inside]


def box_point_stats(uv: np.ndarray, depth: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box of ``boxes (k, 4)``: how many projected points ``uv (2, m)`` fall inside it, and their
    median depth (NaN for a box without points)."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    inside = (
        (uv[0][None, :] >= boxes[:, 0:1])
        & (uv[0][None, :] < boxes[:, 2:3])
        & (uv[1][None, :] >= boxes[:, 1:2])
        & (uv[1][None, :] < boxes[:, 3:4])
    )
    counts = inside.sum(axis=1)
    medians = np.array([np.median(depth[row]) if row.any() else np.nan for row in inside], dtype=float)
    return counts, medians
