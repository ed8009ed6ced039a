"""Feature-similarity maps (kd_det/analysis/similarity.py) and their CLI
(tools/analysis/vis_feature_similarity.py), on the demo's tiny teacher/student pair."""
import importlib.util
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from matplotlib.image import imread
from mmengine.config import Config
from mmdet.registry import MODELS
from mmdet.utils import get_test_pipeline_cfg

from testing_utils import DEMO_TEACHER, REPO, run_tool
from kd_det.analysis.similarity import (DPI, build_distill_model, feature_energy,
                                        figure_size, image_similarity_maps,
                                        load_distill_checkpoint, patch_cka_map, ssim_map,
                                        tile_edges)
from kd_det.checkpoint import CheckpointError
from kd_det.demo.synthetic_coco import render_image
from kd_det.losses import SSIMLoss

SSIM_CONFIG = osp.join(REPO, 'configs', 'demo', 'ssim_faster-rcnn_r34h-to-r18t_fpn_shapes.py')
TOOL = osp.join(REPO, 'tools', 'analysis', 'vis_feature_similarity.py')
# a 160x224 image; the demo's test pipeline resizes it to 137x192 and the batch pads it to
# 160x192, so every level has padded rows to crop
IMAGE_SHAPE = (137, 192)


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def png_size(path: str) -> tuple:
    """(width, height) of a PNG in pixels."""
    height, width = imread(path).shape[:2]
    return width, height


def expected_size(num_levels: int) -> tuple:
    width, height = figure_size(num_levels)
    return round(width * DPI), round(height * DPI)


def assert_figure_of(path: str, num_levels: int) -> None:
    """The PNG has the figure size of ``num_levels`` rows, to the pixel: matplotlib < 3.8
    (the oldest stack's) truncates inches * dpi where newer ones round."""
    width, height = figure_size(num_levels)
    size = png_size(path)
    assert size in {expected_size(num_levels), (int(width * DPI), int(height * DPI))}, size


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A random teacher checkpoint, a distillation checkpoint using it, and an image."""
    root = tmp_path_factory.mktemp('similarity')
    torch.manual_seed(0)
    teacher = MODELS.build(Config.fromfile(DEMO_TEACHER).model)
    teacher.init_weights()
    teacher_ckpt = str(root / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)
    cfg = Config.fromfile(SSIM_CONFIG)
    cfg.model.teacher_ckpt = teacher_ckpt
    model = build_distill_model(cfg)
    distill_ckpt = str(root / 'distill.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, distill_ckpt)
    image, _ = render_image(np.random.default_rng(0), (160, 224), (2, 4), (20, 60))
    image_path = str(root / 'shapes.png')
    cv2.imwrite(image_path, image)
    return dict(root=root, cfg=cfg, teacher=teacher_ckpt, distill=distill_ckpt,
                image=image_path, student=model.student.state_dict())


@pytest.fixture(scope='module')
def model(files):
    return build_distill_model(files['cfg'], files['distill'])


def load_tool():
    spec = importlib.util.spec_from_file_location('vis_feature_similarity', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# ------------------------------------------------------------------ pure functions
def test_feature_energy_is_the_channel_mean_of_squares():
    feats = torch.stack([torch.ones(2, 3), 3 * torch.ones(2, 3)])[None]
    assert torch.equal(feature_energy(feats), torch.full((1, 2, 3), 5.0))


def test_ssim_map_is_one_for_identical_features_and_drops_for_unrelated():
    torch.manual_seed(0)
    a, b = torch.randn(2, 8, 20, 24), torch.randn(2, 8, 20, 24)
    same = ssim_map(a, a)
    assert same.shape == (2, 20, 24)
    assert torch.allclose(same, torch.ones_like(same), atol=1e-5)
    assert ssim_map(a, b).mean() < 0.1
    related = ssim_map(a, a + 0.3 * b)
    assert 0.3 < related.mean() < 0.99
    # the map is what SSIMLoss averages: loss = (1 - mean SSIM) / 2
    assert torch.allclose(ssim_map(a, b).mean(), 1 - 2 * SSIMLoss()(a, b), atol=1e-5)


def test_tile_edges_cover_the_level_with_near_equal_tiles():
    assert tile_edges(48, 16) == [0, 16, 32, 48]
    assert tile_edges(35, 16) == [0, 17, 35]
    assert tile_edges(3, 16) == [0, 3]


def test_patch_cka_map_is_one_for_identical_features_and_drops_for_unrelated():
    torch.manual_seed(0)
    a, b = torch.randn(2, 16, 32, 40), torch.randn(2, 16, 32, 40)
    same = patch_cka_map(a, a, 16)
    assert same.shape == (2, 32, 40)
    assert torch.allclose(same, torch.ones_like(same), atol=1e-5)
    # invariant to a rotation, a scale and an offset of the channels
    rotation, _ = torch.linalg.qr(torch.randn(16, 16))
    moved = torch.einsum('dc,nchw->ndhw', rotation, a) * 3 + 1
    assert torch.allclose(patch_cka_map(moved, a, 16), same, atol=1e-4)
    unrelated = patch_cka_map(a, b, 16)
    assert unrelated.abs().max() < 0.2
    # debiased: 3 x 3 tiles of unrelated features stay near 0 on average too
    small = patch_cka_map(torch.randn(16, 16, 6, 6), torch.randn(16, 16, 6, 6), 3)
    assert small.mean().abs() < 0.1
    # one value per tile: 2 x 2 tiles of 16 x 20 pixels
    assert unrelated[0, :16, :20].unique().numel() == 1
    assert unrelated[0].unique().numel() == 4


def test_patch_cka_map_is_nan_where_undefined():
    torch.manual_seed(0)
    constant = torch.ones(1, 4, 8, 8)
    assert patch_cka_map(constant, torch.randn(1, 4, 8, 8), 4).isnan().all()
    assert patch_cka_map(torch.randn(1, 4, 1, 3), torch.randn(1, 4, 1, 3), 4).isnan().all()


# ------------------------------------------------------------------ model
def test_distillation_checkpoint_loads_student_and_rejects_other_checkpoints(files, model):
    state = model.student.state_dict()
    assert all(torch.equal(state[k], v) for k, v in files['student'].items())
    with pytest.raises(CheckpointError, match='no student'):
        load_distill_checkpoint(model, files['teacher'])


def test_maps_are_cropped_to_the_resized_image(files, model):
    pipeline = get_test_pipeline_cfg(files['cfg'])
    maps = image_similarity_maps(model, files['image'], pipeline)
    height, width = IMAGE_SHAPE
    assert maps.image.shape == (height, width, 3) and maps.image.dtype == np.uint8
    assert [lvl.stride for lvl in maps.levels] == [4, 8, 16, 32, 64]
    # level 0: 35 of the padded batch's 40 rows lie in the image
    assert maps.levels[0].feat_size == (35, 48)
    assert maps.levels[0].patch_size == 16 and maps.levels[4].patch_size == 3
    assert maps.levels[0].tile_rows == [0, 68, 137]
    for lvl in maps.levels:
        for values in (lvl.teacher_energy, lvl.student_energy, lvl.ssim, lvl.cka):
            assert values.shape == (height, width)
        assert np.isfinite(lvl.teacher_energy).all() and np.isfinite(lvl.ssim).all()
        assert (lvl.ssim <= 1 + 1e-5).all() and (np.nan_to_num(lvl.cka) <= 1 + 1e-5).all()
    subset = image_similarity_maps(model, files['image'], pipeline, levels=[1])
    assert np.array_equal(subset.levels[0].ssim, maps.levels[1].ssim)
    with pytest.raises(ValueError,
                       match=r'levels \[5\] do not exist.*student levels \[0, 1, 2, 3, 4\]'):
        image_similarity_maps(model, files['image'], pipeline, levels=[5])


# ------------------------------------------------------------------ CLI
@pytest.mark.slow
def test_tool_writes_a_png_per_image(files, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out_dir = files['root'] / 'out'
    run_tool(TOOL, SSIM_CONFIG, files['image'], '--checkpoint', files['distill'],
             '--out-dir', str(out_dir), '--cfg-options', f'model.teacher_ckpt={files["teacher"]}')
    assert_figure_of(str(out_dir / 'shapes_similarity.png'), 5)


def test_tool_maps_the_untrained_student_on_chosen_levels(files, capsys):
    out_dir = files['root'] / 'untrained'
    load_tool().main([SSIM_CONFIG, files['image'], '--levels', '2', '--out-dir',
                      str(out_dir), '--cfg-options', f'model.teacher_ckpt={files["teacher"]}'])
    assert 'shapes_similarity.png' in capsys.readouterr().out
    assert_figure_of(str(out_dir / 'shapes_similarity.png'), 1)


@pytest.mark.parametrize('case', ['image', 'checkpoint', 'teacher', 'not_distill'])
def test_tool_errors_are_clear(files, case):
    image, ckpt, config = files['image'], files['distill'], SSIM_CONFIG
    teacher, expected = files['teacher'], None
    if case == 'image':
        image = expected = str(files['root'] / 'missing.png')
    elif case == 'checkpoint':
        ckpt = expected = str(files['root'] / 'missing.pth')
    elif case == 'teacher':
        teacher = expected = str(files['root'] / 'missing_teacher.pth')
    else:
        config, expected = DEMO_TEACHER, "model.type is 'FasterRCNN'"
    with pytest.raises(SystemExit) as exc:
        load_tool().main([config, image, '--checkpoint', ckpt, '--out-dir',
                          str(files['root'] / 'errors'),
                          '--cfg-options', f'model.teacher_ckpt={teacher}'])
    assert isinstance(exc.value.code, str) and expected in exc.value.code
