"""Performance benchmarks of the InterCLR study toolkit (``make bench`` = ``python -m bench``).

One module per benchmark, each with a ``run(quick, shared) -> Section`` and
its correctness checks (same outputs as the unoptimised or reference path):

1. :mod:`bench.step`: step time of InterCLR against MoCo v2 (every sampling
   strategy, label mode and search mode; banks of 60k and 1.28M rows), and
   an op-level profile;
2. :mod:`bench.maintenance`: online label maintenance as a share of a step;
3. :mod:`bench.kmeans_bench`: offline k-means against faiss-cpu and scikit-learn;
4. :mod:`bench.pipeline`: the batched augmentation pipeline against what the
   trainer consumes;
5. :mod:`bench.scheduler`: Ray Tune's overhead on a study of trivial trials;
6. :mod:`bench.gpu`: the step on a GPU (ResNet-50, bf16, channels_last) and
   a short `gpu`-preset cell, only where CUDA is available (``make bench-gpu``);
7. :mod:`bench.cell`: one `cpu` cell end to end, timed by phase (start-up,
   training, evaluation, probe), and the checks that the speed-ups change no
   result;
8. :mod:`bench.peer`: our MoCo v2 step against the lightly library's
   documented MoCo v2 loop (same data, backbone, batch, one thread).

``python -m bench --quick`` runs everything at tiny sizes in seconds (the
tests do); the full run writes ``bench/RESULTS.md``.
"""
