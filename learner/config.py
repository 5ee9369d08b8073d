"""The learner's typed configuration, read with `proto.config.load`:

    cfg = load(RunConfig, "run.yaml", ["grpo.kl_coef=0.01", "optim.lr=1e-6"])

`LearnerConfig` is what a training step needs (model, optimizer, GRPO, checkpoints, weight
publishing); `RunConfig` adds the stage schedule, the dispatcher and the held-out evaluation of a
full run (`python -m learner run`). Every section is frozen: what varies during a run (a stage's
learning rate, its overlong masking) reaches the trainer as an argument or in a changed copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from learner.orchestration.schedule import Schedule
from proto.config import Config


class Section(Config):
    """A section of the learner's config: unknown keys are errors, and it never changes once loaded."""


class ModelConfig(Section):
    path: Path | None = None  # a Hugging Face model directory (required to train)
    # auto: bfloat16 on a GPU, float32 on the CPU (the CPU kernels have no fast bf16 path)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # None: flash_attention_2 on a GPU with flash-attn, else sdpa


class OptimConfig(Section):
    lr: float = Field(default=1e-6, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)  # linear warm-up over this many optimizer steps
    grad_clip: float = Field(default=1.0, ge=0)  # max global grad norm; 0 disables clipping


class DeepSpeedConfig(Section):
    zero_stage: Literal[0, 1, 2, 3] = 0
    # Merged last into the generated DeepSpeed config: anything DeepSpeed accepts passes through.
    extra: dict[str, Any] = {}


class GRPOConfig(Section):
    adv_eps: float = Field(default=1e-6, gt=0)  # advantage = (r - mean) / (std + adv_eps)
    updates_per_batch: int = Field(default=1, ge=1)  # 1: strictly on-policy, ratio 1, clip inert
    clip_low: float = Field(default=0.2, ge=0, lt=1)
    clip_high: float = Field(default=0.2, ge=0)
    kl_coef: float = Field(default=0.0, ge=0)  # > 0 loads a frozen reference model
    ref_model_path: Path | None = None  # default: model.path
    entropy_coef: float = Field(default=0.0, ge=0)
    mask_truncated: bool = True  # overlong filtering: no gradient from completions cut at the limit
    drop_zero_variance: bool = True  # groups whose rewards are all equal carry no signal
    tis_cap: float | None = Field(default=None, gt=0)  # truncated importance sampling vs the sampler
    temperature: float = Field(default=1.0, gt=0)  # the sampler's; logits are divided by it


class BatchingConfig(Section):
    # Tokens per forward/backward (padded: rows x longest row); a longer sequence goes alone.
    micro_batch_tokens: int = Field(default=16384, ge=1)
    # Log-probs and entropy go through the LM head this many tokens at a time: the fp32 logits of
    # a whole micro-batch (65,536 x 152,064 x 4 bytes = 40 GB) are never held at once. 512: the
    # largest chunk at which the head's weight gradient, not the chunk, sets the peak (bench.learner).
    logits_chunk_tokens: int = Field(default=512, ge=1)
    # Sequences one after another in a row, no padding: "auto" where the attention kernel reads
    # them apart from position ids alone (flash attention), so no T x T mask is built; "on" also
    # under sdpa/eager (a block-diagonal mask per micro-batch); "off": padded rows.
    packing: Literal["auto", "on", "off"] = "auto"
    # Train a step's groups as they arrive, while the rest are still sampled and judged, where the
    # gradient can be rescaled at the end (one rank, no ZeRO, fp32: Learner.streams); the update
    # is the one of the whole batch at once.
    stream: bool = True


class CheckpointConfig(Section):
    dir: Path | None = None  # default: <run_dir>/checkpoints
    every_steps: int = Field(default=0, ge=0)  # 0: only when asked
    keep_last: int = Field(default=3, ge=1)
    hf_model: bool = True  # also write the model in Hugging Face format


class PublishConfig(Section):
    address: str | None = None  # e.g. tcp://127.0.0.1:* ; None: do not serve weights
    chunk_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    dtype: Literal["model", "float32", "bfloat16", "float16"] = "model"
    max_streams: int = Field(default=16, ge=1)  # concurrent transfers; more get Error(busy)
    send_timeout_s: float = Field(default=60.0, gt=0)
    secret_key: Path | None = None  # CURVE secret key file; required to bind off loopback
    clients_dir: Path | None = None  # public keys of the only generators let in
    # The collective path: generators with weight_transfer=broadcast get each version in one
    # gloo broadcast (learner/training/broadcaster.py); the others keep fetching chunks.
    broadcast: bool = False
    broadcast_host: str = "127.0.0.1"  # where generators reach the learner's TCPStore
    broadcast_bucket_mb: int = Field(default=64, ge=1, le=4096)
    broadcast_timeout_s: float = Field(default=60.0, gt=0)


class MetricsConfig(Section):
    jsonl: bool = True
    tensorboard: bool = True


class LearnerConfig(Section):
    run_dir: Path = Path("runs/learner")
    seed: int = 0
    # Processes of the learner (one per GPU); `acerl run` starts them under torchrun. The step's
    # batch is split across them by tokens and the update equals the one of a single rank.
    ranks: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    grpo: GRPOConfig = GRPOConfig()
    batching: BatchingConfig = BatchingConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    publish: PublishConfig = PublishConfig()
    metrics: MetricsConfig = MetricsConfig()

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint.dir if self.checkpoint.dir is not None else self.run_dir / "checkpoints"


class DispatchConfig(Section):
    address: str = "tcp://127.0.0.1:5555"  # port `*`: the system picks one (see --ready-file)
    secret_key: Path | None = None  # CURVE secret key file; required to bind off loopback
    clients_dir: Path | None = None  # public keys of the only generators let in
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    # work pushed this long ago that a generator's heartbeat does not list is issued again
    reconcile_grace_s: float = Field(default=10.0, gt=0)
    overissue: float = Field(default=1.0, ge=1.0)  # with dynamic sampling: spare prompts in flight
    batch_timeout_s: float = Field(default=1800.0, gt=0)  # no batch in this time stops the run


class EvalSet(Section):
    task: Literal["math", "code"]
    prompts: Path
    limit: int | None = Field(default=None, ge=1)  # the first `limit` prompts only
    # how records, plots and result directories name the set; default: the prompt file's stem
    name: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    @property
    def label(self) -> str:
        return self.name or self.prompts.stem


class EvalConfig(Section):
    """Held-out evaluation before RL and after every stage.

    Before RL and after the last stage of each task (where a task's gain is read) every set is
    scored in full: avg@k, and greedy if `greedy`. After a stage that another of its task follows,
    `between_stages` says what is scored: "full", "greedy" only (a quarter of avg@4's samples),
    or "none"."""

    sets: list[EvalSet] = []
    k: int = Field(default=4, ge=1)  # avg@k: samples per prompt at `temperature`
    temperature: float = Field(default=0.6, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    greedy: bool = True  # also one greedy completion per prompt
    between_stages: Literal["full", "greedy", "none"] = "greedy"
    max_tokens: int | None = Field(default=None, ge=1)  # default: the longest of the schedule's stages
    # A round may take timeout_s plus timeout_s_per_ktoken for every thousand tokens it could
    # generate (prompts x k x max_tokens): one fixed deadline that fits the tiny default would
    # end a 32K-token LiveCodeBench round before it got going.
    timeout_s: float = Field(default=600.0, gt=0)
    timeout_s_per_ktoken: float = Field(default=1.0, ge=0)

    @field_validator("sets")
    @classmethod
    def _sets_named_apart(cls, sets: list[EvalSet]) -> list[EvalSet]:
        labels = [s.label for s in sets]
        twice = sorted({label for label in labels if labels.count(label) > 1})
        if twice:
            raise ValueError(f"two sets named {twice[0]!r}: give one of them a `name`")
        return sets

    def round_timeout_s(self, prompts: int, k: int, max_tokens: int) -> float:
        return self.timeout_s + self.timeout_s_per_ktoken * prompts * k * max_tokens / 1000


class RunConfig(LearnerConfig):
    """A full training run: the learner, its stage schedule, dispatcher and held-out evaluation."""

    schedule: Schedule
    dispatch: DispatchConfig = DispatchConfig()
    eval: EvalConfig = EvalConfig()
