"""The foundation layer: what every other layer of the toolkit uses, importing none of them.

errors.py (the user's errors), paths.py (every root), files.py (the one YAML reader, atomic writes),
config.py (the run config's strict schema, presets and load-time invariants), canonical.py (a run's
identity), names.py (the store's contract: metric names), datasets.py (the datasets, by name).
It imports only the method's registries (study/method/registry.py, study/method/sizes.py: standard
library only), so the data, the trainer, the boundary, the launchers and the analysis all stand on it
without a cycle (tests/test_architecture.py checks the subpackages' graph).
"""
