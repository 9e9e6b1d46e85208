"""The trainer role of the RL loop: ``python -m intellect.rl.trainer --config RUN_DIR/recipe.resolved.yaml``.

Modules: ``loss`` (the importance-masked policy-gradient loss and its options), ``data`` (rollout and warm-up
batches), ``pretrain`` (supervised warm-up), ``checkpoint`` (checkpoints and step folders), ``distributed``
(FSDP2), ``precision`` (float32 master weights, compute in ``model.dtype``), ``schedule`` (the learning rate of
each RL step), ``metrics`` (Prometheus and metrics.jsonl), ``train`` (the ``Trainer``). Importing this package
imports no torch.
"""
