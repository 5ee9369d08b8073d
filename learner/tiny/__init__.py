"""The tiny default: a 2-layer Qwen2 with its own tokenizer, synthetic tasks, the supervised warm
start, and a bandit task for `learner demo`."""
