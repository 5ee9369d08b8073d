"""The trainer: the DeepSpeed policy engine, GRPO, micro-batching, checkpoints and the weight publisher."""
