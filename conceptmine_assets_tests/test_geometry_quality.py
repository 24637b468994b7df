"""Unit tests of the pure geometry (boxes, projection, LiDAR chain) and image-quality functions."""

import cv2
import numpy as np
import pytest

from conceptmine_assets.lib.geometry import (
    box_point_stats,
    clip_box,
    crop_window,
    lidar_to_camera_matrix,
    project_corners,
    project_points,
)
from conceptmine_assets.lib.quality import image_quality, luma
from conceptmine_assets_tests.helpers import box_iou

K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])  # 100 x 80 image
IDENTITY = ([0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])


def solid(value, shape=(20, 30)) -> np.ndarray:
    return np.full((*shape, 3), value, dtype=np.uint8)


def checkerboard(shape=(16, 16)) -> np.ndarray:
    gray = ((np.indices(shape).sum(axis=0) % 2) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


# ---------------------------------------------------------------- quality


@pytest.mark.parametrize(
    ("value", "over", "dark"),
    [(0, 0.0, 1.0), (5, 0.0, 1.0), (6, 0.0, 0.0), (128, 0.0, 0.0), (249, 0.0, 0.0), (250, 1.0, 0.0), (255, 1.0, 0.0)],
)
def test_quality_of_a_flat_image(value, over, dark):
    q = image_quality(solid(value))
    assert q.brightness == pytest.approx(value / 255)
    assert q.overexposed_frac == over
    assert q.dark_frac == dark
    assert q.blur_laplacian_var == 0.0


def test_quality_of_half_black_half_white():
    rgb = solid(0, (10, 20))
    rgb[:, 10:] = 255
    q = image_quality(rgb)
    assert (q.brightness, q.overexposed_frac, q.dark_frac) == (pytest.approx(0.5), 0.5, 0.5)


@pytest.mark.parametrize(("rgb", "expected"), [((255, 0, 0), 76), ((0, 255, 0), 150), ((0, 0, 255), 29)])
def test_luma_weights_channels_as_rgb(rgb, expected):
    assert int(luma(solid(rgb, (2, 2)))[0, 0]) == expected


def test_laplacian_variance_of_a_one_pixel_checkerboard():
    # 4-neighbour Laplacian of a 0/255 checkerboard is +-4*255 everywhere (reflect-101 keeps the pattern).
    assert image_quality(checkerboard()).blur_laplacian_var == pytest.approx((4 * 255) ** 2)


def test_blurring_lowers_laplacian_variance():
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (7, 7), 2.0)
    assert image_quality(blurred).blur_laplacian_var < 0.2 * image_quality(sharp).blur_laplacian_var


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)]
)
def test_quality_rejects_non_rgb_or_empty(bad):
    with pytest.raises(ValueError):
        image_quality(bad)


# ---------------------------------------------------------------- boxes


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10, 20, 30, 40), (10, 20, 30, 40)),
        ((-5, -1, 30, 40), (0, 0, 30, 40)),
        ((90, 70, 120, 95), (90, 70, 100, 80)),
        ((150, 10, 160, 20), (100, 10, 100, 20)),  # fully outside → zero width
    ],
)
def test_clip_box(box, expected):
    assert clip_box(box, 100, 80) == expected


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (20, 20, 30, 30), 0.0),
        ((0, 0, 10, 10), (5, 0, 15, 10), 1 / 3),
        ((0, 0, 10, 10), (0, 0, 5, 5), 0.25),
        ((0, 0, 0, 10), (0, 0, 0, 10), 0.0),  # no area
    ],
)
def test_box_iou(a, b, iou):
    assert box_iou(a, b) == pytest.approx(iou)
    assert box_iou(b, a) == pytest.approx(iou)


@pytest.mark.parametrize(
    ("box", "pad", "expected"),
    [
        ((10, 20, 30, 40), 0.0, (10, 20, 30, 40)),
        ((10, 20, 30, 40), 0.1, (8, 18, 32, 42)),
        ((10.5, 20.5, 29.5, 39.5), 0.0, (10, 20, 30, 40)),  # floor/ceil keep the whole box
        ((2, 3, 98, 79), 0.5, (0, 0, 100, 80)),  # clamped to the image
    ],
)
def test_crop_window(box, pad, expected):
    assert crop_window(box, pad, 100, 80) == expected


# ---------------------------------------------------------------- projection


def cube_corners(center, half=1.0) -> np.ndarray:
    offsets = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)])
    return (np.asarray(center, dtype=float) + offsets).T


def test_project_corners_of_a_cube_in_front():
    # Nearest face at depth 9: x = 50 + 100 * (+-1) / 9, y = 40 + 100 * (+-1) / 9.
    x1, y1, x2, y2 = project_corners(cube_corners([0, 0, 10]), K, 100, 80)
    assert (x1, y1, x2, y2) == pytest.approx((50 - 100 / 9, 40 - 100 / 9, 50 + 100 / 9, 40 + 100 / 9))


def test_project_corners_clips_and_drops_corners_behind():
    assert project_corners(cube_corners([0, 0, -10]), K, 100, 80) is None
    box = project_corners(cube_corners([3, 0, 0.5]), K, 100, 80)  # half behind, far to the right
    assert box is not None and box[2] == 100 and 0 <= box[0] <= 100


def test_project_points_keeps_points_in_front_and_inside():
    pts = np.array([[0.0, 0.0, 10.0], [0.0, 0.0, 0.5], [10.0, 0.0, 2.0], [0.2, -0.1, 2.0]]).T
    uv, depth = project_points(pts, K, 100, 80, min_depth=1.0)
    assert depth.tolist() == [10.0, 2.0]
    np.testing.assert_allclose(uv.T, [[50.0, 40.0], [60.0, 35.0]])


def test_box_point_stats_counts_and_medians():
    uv = np.array([[5.0, 6.0, 7.0, 50.0], [5.0, 6.0, 7.0, 50.0]])
    depth = np.array([1.0, 2.0, 9.0, 4.0])
    counts, medians = box_point_stats(uv, depth, np.array([[0, 0, 10, 10], [40, 40, 60, 60], [80, 80, 90, 90]]))
    assert counts.tolist() == [3, 1, 0]
    assert medians[:2].tolist() == [2.0, 4.0] and np.isnan(medians[2])


def test_lidar_to_camera_matrix_of_identity_poses_is_identity():
    assert np.allclose(lidar_to_camera_matrix(IDENTITY, IDENTITY, IDENTITY, IDENTITY), np.eye(4))


def test_lidar_to_camera_matrix_composes_a_known_chain():
    # LiDAR 1 m above the ego origin; ego moves +2 m in x between the LiDAR and camera times;
    # the camera sits at the ego origin looking along ego +x (nuScenes CAM_FRONT rotation).
    lidar_cs = ([0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0])
    lidar_pose = ([0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    cam_pose = ([2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0])
    cam_cs = ([0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5])
    m = lidar_to_camera_matrix(lidar_cs, lidar_pose, cam_pose, cam_cs)
    point = m @ np.array([12.0, 0.0, -1.0, 1.0])  # ego (12, 0, 0) at LiDAR time = 10 m ahead at camera time
    assert point[:3] == pytest.approx([0.0, 0.0, 10.0], abs=1e-9)


def test_lidar_to_camera_matrix_matches_the_devkit_chain(real_slice):
    """Same result as the step-by-step transforms of NuScenesExplorer.map_pointcloud_to_image."""
    from nuscenes.nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud
    from pyquaternion import Quaternion

    nusc = NuScenes(version="v1.0-mini", dataroot=str(real_slice), verbose=False)
    sample = nusc.sample[0]
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cam_sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    records = {
        "lidar_cs": nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"]),
        "lidar_pose": nusc.get("ego_pose", lidar_sd["ego_pose_token"]),
        "cam_pose": nusc.get("ego_pose", cam_sd["ego_pose_token"]),
        "cam_cs": nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"]),
    }
    pc = LidarPointCloud.from_file(str(real_slice / lidar_sd["filename"]))
    ours = pc.points[:3].astype(float).copy()
    for key in ("lidar_cs", "lidar_pose"):
        pc.rotate(Quaternion(records[key]["rotation"]).rotation_matrix)
        pc.translate(np.array(records[key]["translation"]))
    for key in ("cam_pose", "cam_cs"):
        pc.translate(-np.array(records[key]["translation"]))
        pc.rotate(Quaternion(records[key]["rotation"]).rotation_matrix.T)
    tq = {k: (r["translation"], r["rotation"]) for k, r in records.items()}
    m = lidar_to_camera_matrix(tq["lidar_cs"], tq["lidar_pose"], tq["cam_pose"], tq["cam_cs"])
    assert np.allclose(m[:3, :3] @ ours + m[:3, 3:4], pc.points[:3], atol=1e-3)  # devkit works in float32
