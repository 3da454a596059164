"""The training core that runbooks launch on the GPU box (the ``[train]`` extra).

Data: ``robots`` (feature keys and dims per robot), ``rlds_layout`` (TFDS metadata,
no TF), ``tfrecord`` (numpy-only record/proto reading), ``rlds`` (episode columns),
``fingerprint`` (dataset content hash), ``stats`` / ``stats_file`` (statistics and
their validator), ``synth`` (synthetic LIBERO-layout datasets), ``cache`` /
``cache_dataset`` / ``sampler`` / ``normalize`` (the memory-mapped training cache
and its resumable torch loader).
"""
