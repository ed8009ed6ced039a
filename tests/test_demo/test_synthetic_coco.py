import json
import os
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from kd_det.demo.synthetic_coco import (CLASSES, META_FILE, generate_dataset,
                                        main)

SMALL = dict(num_train=24, num_val=8, num_tune=6, image_size=(128, 160), seed=3)
SPLITS = ('train', 'val', 'tune')


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return generate_dataset(
        str(tmp_path_factory.mktemp('synth') / 'ds'), **SMALL)


def _read(path):
    with open(path, 'rb') as f:
        return f.read()


def _pixels(result, split):
    img_dir = result[f'{split}_img_dir']
    return {
        name: cv2.imread(osp.join(img_dir, name), cv2.IMREAD_UNCHANGED)
        for name in sorted(os.listdir(img_dir))
    }


def _same_images(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_layout_and_counts(dataset):
    assert dataset['classes'] == CLASSES
    assert not dataset['reused']
    for split in SPLITS:
        assert osp.isfile(dataset[f'{split}_ann_file'])
        assert len(os.listdir(dataset[f'{split}_img_dir'])) == \
            SMALL[f'num_{split}']
        assert dataset[f'num_{split}_images'] == SMALL[f'num_{split}']
        assert dataset[f'num_{split}_instances'] == sum(
            dataset[f'{split}_instances_per_class'].values())
    assert osp.isfile(osp.join(dataset['root'], META_FILE))
    # every class occurs even in this small training split
    assert min(dataset['train_instances_per_class'].values()) > 0


def test_deterministic(dataset, tmp_path):
    again = generate_dataset(str(tmp_path / 'again'), **SMALL)
    other = generate_dataset(
        str(tmp_path / 'other'), **dict(SMALL, seed=SMALL['seed'] + 1))
    for split in SPLITS:
        ann = _read(dataset[f'{split}_ann_file'])
        assert ann == _read(again[f'{split}_ann_file'])
        assert ann != _read(other[f'{split}_ann_file'])
        pixels = _pixels(dataset, split)
        assert _same_images(pixels, _pixels(again, split))
        assert not _same_images(pixels, _pixels(other, split))


def test_more_images_keep_the_first_ones(dataset, tmp_path):
    larger = generate_dataset(
        str(tmp_path / 'larger'),
        **dict(SMALL, num_train=SMALL['num_train'] + 4))
    small, large = _pixels(dataset, 'train'), _pixels(larger, 'train')
    assert all(np.array_equal(small[k], large[k]) for k in small)
    # val and tune images keep their pixels though their ids shift
    for split in ('val', 'tune'):
        assert [v.tobytes() for v in _pixels(dataset, split).values()] == \
            [v.tobytes() for v in _pixels(larger, split).values()]


@pytest.mark.parametrize('split', SPLITS)
def test_coco_valid(dataset, split):
    coco = COCO(dataset[f'{split}_ann_file'])
    cat_ids = coco.getCatIds()
    assert cat_ids == list(range(1, len(CLASSES) + 1))
    assert [c['name'] for c in coco.loadCats(cat_ids)] == list(CLASSES)
    h, w = SMALL['image_size']
    for img_info in coco.loadImgs(coco.getImgIds()):
        img = cv2.imread(
            osp.join(dataset[f'{split}_img_dir'], img_info['file_name']))
        assert img.shape == (h, w, 3)
        assert (img_info['height'], img_info['width']) == (h, w)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info['id']))
        assert 1 <= len(anns) <= 8
        for ann in anns:
            x, y, bw, bh = ann['bbox']
            assert all(isinstance(v, float) for v in ann['bbox'])
            assert bw > 0 and bh > 0
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            assert ann['category_id'] in cat_ids
            assert ann['iscrowd'] == 0
            # area counts visible pixels, which all lie inside the box
            assert 0 < ann['area'] <= bw * bh
            assert ann['segmentation'] and all(
                len(poly) >= 6 and len(poly) % 2 == 0
                for poly in ann['segmentation'])
            # the polygons trace the visible region inside the box
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            assert xs.min() >= x and ys.min() >= y
            assert xs.max() < x + bw and ys.max() < y + bh
            assert mask.sum() >= 0.3 * ann['area']


def test_splits_disjoint(dataset):
    cocos = {split: COCO(dataset[f'{split}_ann_file']) for split in SPLITS}
    ids = {split: set(coco.getImgIds()) for split, coco in cocos.items()}
    files = {split: {i['file_name'] for i in coco.dataset['images']}
             for split, coco in cocos.items()}
    for i, a in enumerate(SPLITS):
        assert sorted(files[a]) == sorted(os.listdir(dataset[f'{a}_img_dir']))
        for b in SPLITS[i + 1:]:
            assert not ids[a] & ids[b] and not files[a] & files[b]
    # tune ids follow val's, which follow train's
    assert min(ids['tune']) == max(ids['val']) + 1 == SMALL['num_train'] + SMALL['num_val'] + 1


def test_tune_split_has_its_own_images(dataset):
    """The tune split is drawn from its own streams: none of its images repeats a train or
    val image (same seed), and another seed gives other tune images."""
    tune = _pixels(dataset, 'tune')
    others = [img.tobytes() for split in ('train', 'val')
              for img in _pixels(dataset, split).values()]
    assert len(tune) == SMALL['num_tune']
    assert not {img.tobytes() for img in tune.values()} & set(others)
    assert len({img.tobytes() for img in tune.values()}) == len(tune)
    instances = dataset['tune_instances_per_class']
    assert sum(instances.values()) == dataset['num_tune_instances'] >= SMALL['num_tune']


def test_reuse(dataset):
    before = {
        name: os.stat(osp.join(dataset['train_img_dir'], name)).st_mtime_ns
        for name in os.listdir(dataset['train_img_dir'])
    }
    again = generate_dataset(dataset['root'], **SMALL)
    assert again['reused']
    assert {k: v for k, v in again.items() if k != 'reused'} == \
        {k: v for k, v in dataset.items() if k != 'reused'}
    after = {
        name: os.stat(osp.join(dataset['train_img_dir'], name)).st_mtime_ns
        for name in os.listdir(dataset['train_img_dir'])
    }
    assert before == after


def test_generates_into_empty_dir(tmp_path):
    result = generate_dataset(
        str(tmp_path), num_train=2, num_val=1, num_tune=1, image_size=(64, 64))
    assert not result['reused']
    assert osp.isfile(osp.join(str(tmp_path), META_FILE))


def test_rejects_empty_splits(tmp_path):
    with pytest.raises(ValueError, match='num_tune must be positive, got 2, 1, 0'):
        generate_dataset(str(tmp_path / 'ds'), num_train=2, num_val=1, num_tune=0)
    assert not osp.exists(str(tmp_path / 'ds'))


def test_refuses_foreign_data(tmp_path):
    user_file = tmp_path / 'mine.txt'
    user_file.write_text('precious')
    with pytest.raises(FileExistsError, match='refusing'):
        generate_dataset(str(tmp_path), num_train=2, num_val=1)
    assert user_file.read_text() == 'precious'
    assert sorted(os.listdir(str(tmp_path))) == ['mine.txt']


def test_refuses_other_params(dataset):
    with pytest.raises(FileExistsError, match='other parameters'):
        generate_dataset(dataset['root'], **dict(SMALL, seed=99))
    assert generate_dataset(dataset['root'], **SMALL)['reused']


def test_refuses_modified_dataset(tmp_path):
    result = generate_dataset(
        str(tmp_path / 'ds'), num_train=2, num_val=1, num_tune=1,
        image_size=(64, 64))
    ann_file = result['train_ann_file']
    coco = json.loads(_read(ann_file))
    coco['annotations'] = coco['annotations'][1:]
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    with pytest.raises(FileExistsError, match='no longer match'):
        generate_dataset(
            str(tmp_path / 'ds'), num_train=2, num_val=1, num_tune=1,
            image_size=(64, 64))
    assert json.loads(_read(ann_file)) == coco


def test_cli(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'cli')
    monkeypatch.setattr(sys, 'argv', [
        'synthetic_coco', out, '--num-train', '3', '--num-val', '2',
        '--num-tune', '2', '--size', '96', '128', '--seed', '5'
    ])
    main()
    printed = capsys.readouterr().out
    assert printed.startswith('generated')
    assert 'train: 3 images' in printed and 'val: 2 images' in printed
    assert 'tune: 2 images' in printed
    assert sorted(os.listdir(osp.join(out, 'tune'))) == ['000006.png', '000007.png']
    main()
    assert capsys.readouterr().out.startswith('reused')
    img = cv2.imread(osp.join(out, 'val', '000004.png'))
    assert img.shape == (96, 128, 3)


def test_loads_in_mmdet(dataset):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules
    register_all_modules()
    ds = CocoDataset(
        data_root=dataset['root'],
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[],
        test_mode=False)
    assert len(ds) == SMALL['num_train']
    sample = ds[0]
    assert osp.isfile(sample['img_path'])
    assert sample['instances']
    for inst in sample['instances']:
        assert 0 <= inst['bbox_label'] < len(CLASSES)
        x1, y1, x2, y2 = inst['bbox']
        assert x2 > x1 and y2 > y1
