"""Session setup for all tests; shared helpers live in testing_utils.py."""
from mmdet.utils import register_all_modules

import kd_det  # noqa: F401

# mmdet's default scope, as its Runner and tools set it.
register_all_modules()
