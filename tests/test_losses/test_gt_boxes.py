"""Boxes of a batch as RoIs, and the class of sampled RoIs."""
import torch
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import HorizontalBoxes
from mmengine.structures import InstanceData

from kd_det.losses.gt_boxes import gt_rois, image_ids, roi_labels


def _samples():
    samples = []
    for i, (boxes, labels) in enumerate([([[0., 0., 10., 10.], [5., 5., 25., 15.]], [1, 2]),
                                         ([], []), ([[2., 3., 4., 5.]], [0])]):
        sample = DetDataSample(metainfo=dict(img_id=100 + i))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(torch.tensor(boxes).reshape(-1, 4)),
            labels=torch.tensor(labels, dtype=torch.long))
        samples.append(sample)
    return samples


def test_gt_rois_index_each_box_by_its_image():
    rois = gt_rois(_samples(), torch.device('cpu'))
    assert rois.tolist() == [[0., 0., 0., 10., 10.], [0., 5., 5., 25., 15.],
                             [2., 2., 3., 4., 5.]]
    assert image_ids(_samples(), rois[:, 0].long()).tolist() == [100, 100, 102]
    assert image_ids(None, rois[:, 0].long()).tolist() == [-1, -1, -1]


def test_roi_labels_by_best_iou_against_the_boxes_of_the_same_image():
    rois = torch.tensor([
        [0, 0., 0., 10., 10.],     # IoU 1 with class 1
        [0, 0., 0., 10., 20.],     # IoU 0.5 with class 1: positive at 0.5
        [0, 5., 5., 25., 16.],     # best: class 2 (IoU 200 / 220)
        [1, 0., 0., 10., 10.],     # image 1 has no box
        [2, 0., 0., 10., 10.],     # IoU 4 / 100 with class 0
        [2, 2., 3., 4., 5.]])      # exact box of image 2, class 0
    assert roi_labels(rois, _samples(), 0.5).tolist() == [1, 1, 2, -1, -1, 0]
    assert roi_labels(rois, _samples(), 0.6).tolist() == [1, -1, 2, -1, -1, 0]


def test_string_image_ids_are_stable_distinct_numbers():
    """Custom and XML datasets name images by strings; each maps to one number, the same in
    another process (another hash seed, as another rank or a resumed run), apart from ints."""
    import subprocess
    import sys

    from kd_det.losses.gt_boxes import image_id_number
    names = ['street_cam0_a', 'street_cam0_b', '2008_000008', '17']
    numbers = [image_id_number(n) for n in names]
    assert len(set(numbers)) == 4 and all(2 ** 62 <= n < 2 ** 63 for n in numbers)
    assert image_id_number(17) == 17 and image_id_number(torch.tensor(5)) == 5
    code = ('from kd_det.losses.gt_boxes import image_id_number; '
            f'print([image_id_number(n) for n in {names!r}])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True, env={**__import__('os').environ, 'PYTHONHASHSEED': '123'})
    assert out.stdout.strip() == str(numbers)
    samples = _samples()
    for sample, name in zip(samples, ['street_cam0_a', 'street_cam0_b', 'street_cam0_a']):
        sample.set_metainfo(dict(img_id=name))
    ids = image_ids(samples, torch.tensor([0, 1, 2, 0]))
    assert ids[0] == ids[2] == ids[3] != ids[1]
