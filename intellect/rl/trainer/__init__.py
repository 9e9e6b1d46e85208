"""The trainer role of the RL loop: ``python -m intellect.rl.trainer --config RUN_DIR/recipe.resolved.yaml``.

Modules: ``loss`` (the importance-masked policy-gradient loss), ``data`` (rollout and warm-up batches),
``pretrain`` (supervised warm-up), ``checkpoint`` (checkpoints and step folders), ``distributed`` (FSDP2),
``metrics`` (Prometheus and metrics.jsonl), ``train`` (the ``Trainer``). Importing this package imports no torch.
"""
