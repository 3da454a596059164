"""The training core that runbooks launch on the GPU box (the ``[train]`` extra).

Data: ``robots`` (feature keys and dims per robot), ``rlds_layout`` (TFDS metadata,
no TF), ``tfrecord`` (numpy-only record/proto reading), ``rlds`` (episode columns),
``fingerprint`` (dataset content hash), ``stats`` / ``stats_file`` (statistics and
their validator), ``synth`` (synthetic LIBERO-layout datasets), ``cache`` /
``cache_dataset`` / ``sampler`` / ``normalize`` (the memory-mapped training cache
and its resumable torch loader).

Training (``python -m training.train``, log lines in ``LOGS.md``): ``config`` (the
pydantic TrainConfig), ``policy`` / ``instructions`` (vision encoder + language
backbone + action head, token tables), ``objectives`` (losses as pure functions),
``craft`` (CRaFT's two-gradient update), ``schedules`` (LR and loss weights as
functions of the step), ``distributed`` (torchrun, DDP/FSDP), ``checkpoint``
(atomic checkpoints, resume), ``watchdog`` (collapse detection), ``tracking``
(wandb), ``progress`` (gate log lines), ``throughput`` (FLOPs, MFU, data wait).
"""
