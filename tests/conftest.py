"""Session setup for all tests; shared helpers live in testing_utils.py."""
import pytest
from mmdet.utils import register_all_modules

import kd_det  # noqa: F401
import testing_utils

# mmdet's default scope, as its Runner and tools set it.
register_all_modules()


@pytest.fixture(scope='session')
def coco128(tmp_path_factory) -> str:
    """The coco128 folder: the shared one if present, else a stand-in generated once."""
    root = testing_utils.SHARED_COCO128
    if not testing_utils.has_coco128(root):
        root = testing_utils.make_coco128_standin(str(tmp_path_factory.mktemp('coco128')))
    testing_utils.use_coco128(root)
    return root
