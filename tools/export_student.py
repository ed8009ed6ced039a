"""Export the student of a distillation checkpoint as a plain mmdet checkpoint.

    python tools/export_student.py work_dirs/RUN/epoch_24.pth student.pth [--force]

Same as ``python -m kd_det.export``.
"""
from kd_det.export import main

if __name__ == '__main__':
    main()
