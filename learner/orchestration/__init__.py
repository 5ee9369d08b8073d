"""The run: the training loop and its batch sources, the dispatcher and its books, held-out
evaluation, prompts and the stage schedule."""
