"""Dataset formats, one module each: ``load(root, image_size, unlabeled)`` and ``files(root, unlabeled)``.

Each is named once, in study/data/registry.py, which says what a format module exposes.
"""
