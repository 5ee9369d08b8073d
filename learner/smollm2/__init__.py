"""SmolLM2-135M-Instruct from the package registry, and tasks sized for it (`prepare: smollm2`)."""
