"""Dataset formats, one module each: ``load(root, image_size, unlabeled)`` and ``files(root, unlabeled)``.

Each is named once, in study/core/datasets.py, which says what a format module exposes.
"""
