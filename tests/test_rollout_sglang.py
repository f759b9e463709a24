"""rollout_sglang.py on CPU: weight bucketing, the push into SGLang with its modules and engine faked at
the boundary (the fakes read payloads the way sglang 0.5.23's receiver does), the phase order of one
step, the memory check, and the samples train.py consumes. The FSDP2 case runs as two gloo processes:
    python -m torch.distributed.run --nproc_per_node 2 tests/test_rollout_sglang.py OUT_DIR
"""

import base64
import copy
import dataclasses
import os
import pickle
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)   # also when run as the torchrun worker below
import model as modeling  # noqa: E402
import rollout_sglang as rs  # noqa: E402
from fsdp_no_grad import GatherRecorder  # noqa: E402   the two-process test's recorder of all-gathers
EOS = 2


# ----------------------------------------------------------------------------- bucket plan

def test_plan_buckets_greedy_in_order_with_oversize_alone():
    f32 = torch.float32
    params = [("a", (10,), f32), ("b", (5,), f32), ("c", (100,), f32), ("d", (3,), f32), ("e", (4,), f32),
              ("f", (2, 2), f32)]
    # bytes: a 40, b 20, c 400 (over the 64-byte cap), d 12, e 16, f 16
    assert rs.plan_buckets(params, 64) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert rs.plan_buckets(params, 10_000) == [["a", "b", "c", "d", "e", "f"]]
    assert rs.plan_buckets(params, 1) == [[n] for n, _, _ in params]
    # exactly full is allowed: 40 + 20 == 60
    assert rs.plan_buckets(params[:3], 60) == [["a", "b"], ["c"]]
    # the dtype sent sets the size: bf16 halves it, so a, b, d... fit where fp32 did not
    bf16 = [(n, s, torch.bfloat16) for n, s, _ in params]
    assert rs.plan_buckets(bf16, 32) == [["a", "b"], ["c"], ["d", "e", "f"]]
    assert rs.plan_buckets([], 64) == []


@pytest.mark.parametrize("cap", [1, 5000, 70_000, 300_000, 10 ** 9])
def test_plan_covers_every_tiny_parameter_once_under_the_cap(cap):
    net = modeling.load_model("tiny")
    params = rs.weight_list(net, torch.float32)
    plan = rs.plan_buckets(params, cap)
    flat = [n for b in plan for n in b]
    assert flat == [n for n, _ in net.named_parameters()]   # each once, in order
    size = {n: torch.Size(s).numel() * 4 for n, s, _ in params}
    for bucket in plan:
        assert len(bucket) == 1 or sum(size[n] for n in bucket) <= cap
    # greedy: the first tensor of the next bucket would not have fit
    for b, nxt in zip(plan, plan[1:]):
        assert sum(size[n] for n in b) + size[nxt[0]] > cap


def test_tied_embedding_is_sent_once_and_untied_head_is_sent():
    tied = modeling.load_model("tiny")
    names = [n for n, _, _ in rs.weight_list(tied, torch.float32)]
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert names.count("model.embed_tokens.weight") == 1 and "lm_head.weight" not in names
    config = modeling.tiny_config()
    config.tie_word_embeddings = False
    from transformers import Qwen3ForCausalLM
    untied = Qwen3ForCausalLM(config)
    names = [n for n, _, _ in rs.weight_list(untied, torch.float32)]
    assert names.count("lm_head.weight") == 1 and names.count("model.embed_tokens.weight") == 1


def test_hf_name_strips_wrapper_prefixes():
    assert rs.hf_name("model.layers.3._checkpoint_wrapped_module.mlp.up_proj.weight") == \
        "model.layers.3.mlp.up_proj.weight"
    assert rs.hf_name("_orig_mod.model.norm.weight") == "model.norm.weight"
    assert rs.hf_name("model.norm.weight") == "model.norm.weight"


# ----------------------------------------------------------------------------- fakes at the SGLang boundary

@dataclasses.dataclass
class FakeMeta:   # the fields of sglang.srt.weight_sync.tensor_bucket.FlattenedTensorMetadata (0.5.23)
    name: str
    shape: torch.Size
    dtype: torch.dtype
    start_idx: int
    end_idx: int
    numel: int


class FakeSerializer:
    @staticmethod
    def serialize(obj, output_str=False):
        data = pickle.dumps(obj)
        return base64.b64encode(data).decode() if output_str else data


@pytest.fixture
def fake_sglang(monkeypatch):
    """sglang's modules as update_weights_sglang imports them, with a record of the patch call."""
    patched = []
    mods = {name: types.ModuleType(name) for name in
            ("sglang", "sglang.srt", "sglang.srt.utils", "sglang.srt.utils.patch_torch",
             "sglang.srt.weight_sync", "sglang.srt.weight_sync.tensor_bucket")}
    mods["sglang.srt.utils"].MultiprocessingSerializer = FakeSerializer
    mods["sglang.srt.utils.patch_torch"].monkey_patch_torch_reductions = lambda: patched.append(True)
    mods["sglang.srt.weight_sync.tensor_bucket"].FlattenedTensorMetadata = FakeMeta
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(modules=mods, patched=patched)


class FakeEngine:
    """Records every call; models the memory the engine holds per tag; rebuilds pushed tensors the way
    sglang 0.5.23's _update_weights_from_flattened_bucket does; refuses calls out of order."""

    SIZES = {"weights": 3000, "kv_cache": 7000, "cuda_graph": 500}

    def __init__(self, expected_names, leak=0, total=100_000):
        self.expected_names, self.leak, self.total = set(expected_names), leak, total
        self.calls, self.resident, self.session = [], set(), False
        self.received, self.bucket_bytes, self.used = {}, [], 0
        self.generate_args = None
        self.outputs = None   # set by a test: list of sglang output dicts

    def mem_get_info(self):
        return self.total - self.used, self.total

    def resume_memory_occupation(self, tags=None):
        self.calls.append(("resume", tuple(tags)))
        for t in tags:
            assert t not in self.resident, f"{t} resumed twice"
            self.resident.add(t)
            self.used += self.SIZES[t]

    def release_memory_occupation(self, tags=None):
        tags = tags or list(self.SIZES)
        self.calls.append(("release", tuple(sorted(tags))))
        for t in tags:
            if t in self.resident:
                self.resident.remove(t)
                self.used -= self.SIZES[t]
        self.used += self.leak   # memory a buggy release keeps

    def begin_weight_update(self):
        assert "weights" in self.resident and not self.session
        self.session = True
        self.calls.append(("begin",))
        return True, "Success"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        assert self.session, "0.5.23 refuses updates outside begin/end_weight_update"
        assert "weights" in self.resident
        assert load_format == "flattened_bucket" and flush_cache is False
        assert isinstance(named_tensors, list) and len(named_tensors) == 1   # one payload per TP rank
        data = pickle.loads(base64.b64decode(named_tensors[0]))
        flat = data["flattened_tensor"]
        assert flat.dtype == torch.uint8 and flat.dim() == 1
        names = []
        for meta in data["metadata"]:
            assert isinstance(meta, FakeMeta) and meta.numel == meta.end_idx - meta.start_idx
            t = flat[meta.start_idx: meta.end_idx].view(meta.dtype).reshape(meta.shape)
            assert meta.name not in self.received, f"{meta.name} sent twice"
            self.received[meta.name] = t.clone()
            names.append(meta.name)
        self.bucket_bytes.append(flat.numel())
        self.calls.append(("update", tuple(names)))
        return True, "Success"

    def end_weight_update(self):
        assert self.session
        self.session = False
        self.calls.append(("end",))
        return True, "Success"

    def flush_cache(self):
        self.calls.append(("flush",))
        return types.SimpleNamespace(success=True, message="")

    def generate(self, input_ids, sampling_params, return_logprob=False):
        assert self.resident == set(self.SIZES), f"generate with only {self.resident} resident"
        assert set(self.received) == self.expected_names, "generate before every weight arrived"
        assert not self.session and self.calls[-1] == ("resume", ("kv_cache", "cuda_graph"))
        assert return_logprob is True
        self.calls.append(("generate", len(input_ids)))
        self.generate_args = (input_ids, sampling_params)
        return self.outputs or [fake_output(i, sampling_params["max_new_tokens"]) for i in range(len(input_ids))]


def fake_output(i, max_new, logps=None):
    """Request i: every third one runs to max_new tokens (length), the others stop on eos."""
    if i % 3 == 2:
        ids = [10 + (i + j) % 50 for j in range(max_new)]
        reason = {"type": "length", "length": max_new}
    else:
        ids = [10 + (i + j) % 50 for j in range(i % max_new)] + [EOS]
        reason = {"type": "stop", "matched": EOS}
    logps = logps if logps is not None else [-0.1 * (j + 1) - 0.01 * i for j in range(len(ids))]
    return {"output_ids": list(ids), "meta_info": {
        "finish_reason": reason, "output_token_logprobs": [(lp, t, None) for lp, t in zip(logps, ids)]}}


# ----------------------------------------------------------------------------- weight push

@pytest.mark.parametrize("cap", [4096, 300_000])
def test_push_sends_every_weight_exactly(fake_sglang, cap):
    net = modeling.load_model("tiny")
    names = [n for n, _ in net.named_parameters()]
    engine = FakeEngine(names)
    engine.resume_memory_occupation(tags=["weights"])
    sent = rs.update_weights_sglang(engine, rs.iter_buckets(net, cap, torch.float32))
    assert fake_sglang.patched, "CUDA IPC needs sglang's reduction patch on the sender"
    assert set(engine.received) == set(names)
    for name, p in net.named_parameters():
        assert engine.received[name].dtype == torch.float32
        assert torch.equal(engine.received[name], p.detach()), name
    total = sum(p.numel() * 4 for p in net.parameters())
    assert sent == total == sum(engine.bucket_bytes)
    # bucket sizes follow the plan: at most the cap, unless one tensor alone exceeds it
    plan = rs.plan_buckets(rs.weight_list(net, torch.float32), cap)
    assert [c for c in engine.calls if c[0] == "update"] == [("update", tuple(b)) for b in plan]
    assert engine.calls[1] == ("begin",) and engine.calls[-1] == ("end",)


def test_push_casts_to_the_engine_dtype(fake_sglang):
    # the engine dtype on a GPU is bf16: the bucket holds each weight rounded to it (a cast, no other change)
    net = modeling.load_model("tiny")
    engine = FakeEngine([n for n, _ in net.named_parameters()])
    engine.resume_memory_occupation(tags=["weights"])
    rs.update_weights_sglang(engine, rs.iter_buckets(net, 50_000, torch.bfloat16))
    for name, p in net.named_parameters():
        assert engine.received[name].dtype == torch.bfloat16
        assert torch.equal(engine.received[name], p.detach().to(torch.bfloat16)), name


def test_push_failure_is_an_error(fake_sglang):
    net = modeling.load_model("tiny")
    engine = FakeEngine([n for n, _ in net.named_parameters()])
    engine.resume_memory_occupation(tags=["weights"])
    engine.update_weights_from_tensor = lambda **kw: (False, "Parameter x not found")
    with pytest.raises(RuntimeError, match="Parameter x not found"):
        rs.update_weights_sglang(engine, rs.iter_buckets(net, 50_000, torch.float32))


# ----------------------------------------------------------------------------- one step

def chat_ids(tok, n):
    return [tok(tok.apply_chat_template([{"role": "user", "content": f"{i}+{i}="}], add_generation_prompt=True,
                                        tokenize=False), add_special_tokens=False)["input_ids"] for i in range(n)]


def test_rollout_step_phase_order_samples_and_memory(fake_sglang):
    net, tok = modeling.load_model("tiny"), modeling.load_tokenizer("tiny")
    names = [n for n, _ in net.named_parameters()]
    engine = FakeEngine(names)
    prompts = chat_ids(tok, 3)
    samples, stats = rs.rollout_step(net, engine, prompts, n=4, max_new_tokens=5, temperature=0.7,
                                     stop_ids=[EOS], tokenizer=tok, bucket_bytes=20_000, dtype=torch.float32,
                                     mem_get_info=engine.mem_get_info)
    kinds = [c[0] for c in engine.calls]
    n_updates = kinds.count("update")
    assert n_updates > 2
    assert kinds == ["resume", "begin"] + ["update"] * n_updates + ["end", "flush", "resume", "generate", "release"]
    assert engine.calls[0] == ("resume", ("weights",))
    assert engine.calls[-3] == ("resume", ("kv_cache", "cuda_graph"))
    assert engine.calls[-1] == ("release", ("cuda_graph", "kv_cache", "weights"))
    # released before training: the engine holds nothing and gave back all it took
    assert engine.resident == set() and engine.used == 0
    assert stats["engine_bytes"] == sum(FakeEngine.SIZES.values()) == stats["freed_bytes"]
    assert stats["sync_bytes"] == sum(p.numel() * 4 for p in net.parameters())
    # requests: prompt-major, n copies each, every sampling knob explicit
    input_ids, params = engine.generate_args
    assert input_ids == [p for p in prompts for _ in range(4)]
    assert params == {"max_new_tokens": 5, "temperature": 0.7, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                      "repetition_penalty": 1.0, "stop_token_ids": [EOS]}
    # samples in train.py's shape
    assert len(samples) == 12
    assert stats["generated_tokens"] == sum(len(s["completion_ids"]) for s in samples)
    for i, s in enumerate(samples):
        assert set(s) == {"prompt_ids", "completion_ids", "text", "truncated", "rollout_logp"}
        assert s["prompt_ids"] == prompts[i // 4]
        out = fake_output(i, 5)
        assert s["completion_ids"] == out["output_ids"]
        assert s["truncated"] == (i % 3 == 2)
        assert s["truncated"] or s["completion_ids"][-1] == EOS
        assert len(s["rollout_logp"]) == len(s["completion_ids"])
        assert s["rollout_logp"] == pytest.approx([-0.1 * (j + 1) - 0.01 * i for j in range(len(s["completion_ids"]))])
        assert s["text"] == tok.decode(s["completion_ids"], skip_special_tokens=True)
        assert "<|im_end|>" not in s["text"]


def test_release_that_frees_too_little_warns(fake_sglang):
    net = modeling.load_model("tiny")
    engine = FakeEngine([n for n, _ in net.named_parameters()], leak=4000)
    with pytest.warns(RuntimeWarning, match="freed 0.00 GiB of the 0.00 GiB"):
        _, stats = rs.rollout_step(net, engine, [[5, 6, 7]], n=2, max_new_tokens=3, temperature=1.0,
                                   stop_ids=[EOS], dtype=torch.float32, mem_get_info=engine.mem_get_info)
    assert stats["freed_bytes"] == sum(FakeEngine.SIZES.values()) - 4000
    assert engine.resident == set()


def test_generate_error_still_releases(fake_sglang):
    net = modeling.load_model("tiny")
    engine = FakeEngine([n for n, _ in net.named_parameters()])
    engine.outputs = [{"output_ids": [], "meta_info": {"finish_reason": {"type": "abort", "message": "oom"},
                                                        "output_token_logprobs": []}}] * 2
    with pytest.raises(RuntimeError, match="abort"):
        rs.rollout_step(net, engine, [[5, 6, 7]], n=2, max_new_tokens=3, temperature=1.0, stop_ids=[EOS],
                        dtype=torch.float32, mem_get_info=engine.mem_get_info)
    assert engine.calls[-1][0] == "release" and engine.resident == set()


def test_to_sample_rejects_disagreeing_ids():
    out = fake_output(0, 4)
    out["output_ids"] = out["output_ids"] + [7]
    with pytest.raises(RuntimeError, match="disagree"):
        rs.to_sample([1, 2], out)


def test_rollout_logp_feeds_train_truncated_importance_weight(fake_sglang, monkeypatch):
    """train_on turns rollout_logp into min(pi_trainer / pi_rollout, cap) on exactly the completion tokens.
    With rollout log-probs 1.0 below the trainer's, every completion token gets min(e, 2) = 2."""
    import train
    net = modeling.load_model("tiny")
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    engine = FakeEngine([n for n, _ in net.named_parameters()])
    raw = [fake_output(i, 4) for i in range(4)]
    # the trainer's own log-probs of each completion token, at temperature 1
    own = []
    for i, out in enumerate(raw):
        ids = torch.tensor([prompts[i // 2] + out["output_ids"]])
        with torch.no_grad():
            logits = net(input_ids=ids).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        own.append(lp[len(prompts[i // 2]) - 1:].tolist())
    engine.outputs = [fake_output(i, 4, logps=[x - 1.0 for x in own[i]]) for i in range(4)]
    samples, _ = rs.rollout_step(net, engine, prompts, n=2, max_new_tokens=4, temperature=1.0, stop_ids=[EOS],
                                 dtype=torch.float32, mem_get_info=engine.mem_get_info)
    seen = []
    real = train.policy_loss_torch

    def spy(*a, is_weight=None, **k):
        seen.append((is_weight, a[3]))   # (is_weight, mask)
        return real(*a, is_weight=is_weight, **k)

    monkeypatch.setattr(train, "policy_loss_torch", spy)
    cfg = train.Config(domains=("math",), micro_batch=4, max_new_tokens=4, tis_cap=2.0, group_size=2)
    train.train_on(net, samples, torch.tensor([1.0, -1.0, 0.5, -0.5]), cfg, 0, "cpu", denom=10.0, n_micro=1)
    (is_w, mask), = seen
    assert is_w is not None
    assert mask.sum() == sum(len(s["completion_ids"]) for s in samples)
    torch.testing.assert_close(is_w, 2.0 * mask, atol=1e-5, rtol=0)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_hf_and_sglang_rollouts_stop_on_the_same_ids(monkeypatch):
    """train.rollout gives SGLang the stop set HF generate uses: the tokenizer's eos and the generation config's
    (Qwen3: <|im_end|> and <|endoftext|>, here ids 2 and 0 of the tiny tokenizer)."""
    import train
    net, tok = modeling.load_model("tiny"), modeling.load_tokenizer("tiny")
    net.generation_config.eos_token_id = [EOS, 0]
    rows = [{"prompt": [{"role": "user", "content": "1+1="}]}]
    seen = {}

    def fake_rollout_step(model, engine, prompt_ids, *, stop_ids, **kw):
        seen["sglang"] = sorted(stop_ids)
        return [], {"sync_s": 0.0}

    monkeypatch.setattr(rs, "rollout_step", fake_rollout_step)
    train.rollout(net, None, tok, rows, train.Config(domains=("math",), rollout="sglang", group_size=2), seed=0)
    engine = copy.deepcopy(net).eval()
    real = engine.generate

    def spy(*a, generation_config, **kw):
        seen["hf"] = sorted(generation_config.eos_token_id)
        return real(*a, generation_config=generation_config, **kw)

    monkeypatch.setattr(engine, "generate", spy)
    monkeypatch.setattr(modeling, "generate_for", lambda model: modeling.generate)   # HF generate, not fast_generate
    train.rollout(net, engine, tok, rows, train.Config(domains=("math",), group_size=2), seed=0)
    assert seen == {"sglang": [0, EOS], "hf": [0, EOS]}
    # the small world's sampler (model.fast_generate) stops on the same set: its first token is one of them here
    monkeypatch.undo()
    engine.generation_config.eos_token_id = [EOS, 0]
    logits_bias = torch.zeros(engine.config.vocab_size)
    logits_bias[0] = 50.0   # <|endoftext|>, the generation config's second eos
    engine.lm_head.bias = torch.nn.Parameter(logits_bias)
    out = modeling.fast_generate(engine, tok, [rows[0]["prompt"]], n=2, max_new_tokens=4, temperature=1.0, seed=0)
    assert [o["completion_ids"] for o in out] == [[0], [0]] and not any(o["truncated"] for o in out)
    assert modeling.stop_token_ids(tok, net.generation_config) == [0, EOS]


# ----------------------------------------------------------------------------- engine creation

def test_engine_kwargs_per_rank():
    kws = [rs.engine_kwargs("/m", local_rank=r, mem_fraction=0.4, seed=3 + r) for r in range(8)]
    k = kws[0]
    assert (k["model_path"], k["load_format"], k["skip_tokenizer_init"], k["enable_memory_saver"]) == \
        ("/m", "dummy", True, True)
    assert (k["tp_size"], k["dtype"], k["mem_fraction_static"], k["sampling_defaults"]) == (1, "bfloat16", 0.4, "openai")
    assert [k["base_gpu_id"] for k in kws] == list(range(8))
    ports = [k["port"] for k in kws] + [k["nccl_port"] for k in kws]
    assert len(set(ports)) == 16


def test_make_engine_under_torchrun_env(fake_sglang, monkeypatch, tmp_path):
    created = []

    class Engine:
        def __init__(self, **kw):
            self.kw, self.released = kw, None
            self.env = os.environ.get("TORCHELASTIC_USE_AGENT_STORE")
            created.append(self)

        def release_memory_occupation(self, tags=None):
            self.released = tags

    fake_sglang.modules["sglang"].Engine = Engine
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")   # as torchrun sets it
    monkeypatch.setattr(rs.tempfile, "mkdtemp", lambda prefix: str(tmp_path / prefix))
    net = modeling.load_model("tiny")
    engine = rs.make_engine(net, local_rank=3, mem_fraction=0.3, seed=7)
    assert created == [engine]
    assert engine.env == "False"                                  # the scheduler's rendezvous hosts its store
    assert os.environ["TORCHELASTIC_USE_AGENT_STORE"] == "True"   # and the trainer's environment is restored
    assert sorted(engine.released) == sorted(rs.MEMORY_TAGS)      # released at once, for the trainer
    assert engine.kw["base_gpu_id"] == 3 and engine.kw["random_seed"] == 7
    path = engine.kw["model_path"]
    assert sorted(os.listdir(path)) == ["config.json"]            # no generation_config.json defaults
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == ["Qwen3ForCausalLM"] and config.tie_word_embeddings
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (128, 4, 1024)


# ----------------------------------------------------------------------------- FSDP2, two processes

@pytest.fixture(scope="module")
def fsdp_buckets(tmp_path_factory):
    """The FSDP2 worker below, run once on two gloo processes; its files, one per rank."""
    out = tmp_path_factory.mktemp("fsdp_buckets")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        os.path.join("tests", "test_rollout_sglang.py"), str(out)],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt") for rank in (0, 1)]


def test_fsdp2_buckets_rebuild_the_full_weights(fsdp_buckets):
    ref = dict(modeling.load_model("tiny").named_parameters())
    for rank, got in enumerate(fsdp_buckets):
        assert got["architecture"] == "Qwen3ForCausalLM"
        assert got["sharded"]   # the test ran on DTensors, not plain tensors
        assert got["n_buckets"] > 3
        assert list(got["weights"]) == list(ref)
        for name, t in got["weights"].items():
            assert torch.equal(t, ref[name].detach()), (rank, name)


def test_fsdp2_bf16_buckets_gather_bf16_shards(fsdp_buckets):
    """Sent as bf16 (the engine's dtype on a GPU), each fp32 shard is cast before its all-gather, which then
    moves half the bytes; the weights that arrive are the fp32 ones rounded once to bf16."""
    ref = dict(modeling.load_model("tiny").named_parameters())
    fp32_bytes = sum(p.numel() * 4 for p in ref.values())
    for rank, got in enumerate(fsdp_buckets):
        assert {dtype for dtype, _ in got["gathers_fp32"]} == {torch.float32}
        assert {dtype for dtype, _ in got["gathers_bf16"]} == {torch.bfloat16}, (rank, got["gathers_bf16"])
        # each rank puts in its own shard: the two ranks' inputs add up to the model
        assert sum(b for _, b in got["gathers_bf16"]) * 2 == sum(b for _, b in got["gathers_fp32"])
        for name, t in got["weights_bf16"].items():
            assert t.dtype == torch.bfloat16 and torch.equal(t, ref[name].detach().to(torch.bfloat16)), (rank, name)
    assert sum(b for got in fsdp_buckets for _, b in got["gathers_fp32"]) == fp32_bytes


def _read_buckets(net, dtype):
    weights, n_buckets, rec = {}, 0, GatherRecorder()
    with rec:
        for flat, slots in rs.iter_buckets(net, 40_000, dtype):   # the 256 KiB embedding goes alone
            n_buckets += 1
            for s in slots:   # read back as the receiver does
                weights[s.name] = flat[s.start: s.end].view(s.dtype).reshape(s.shape).clone()
    return weights, n_buckets, rec.seen


def _fsdp_worker(out_dir: str) -> None:
    import torch.distributed as dist
    import train
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    net = train.shard(modeling.load_model("tiny"), torch.device("cpu"))
    sharded = all(hasattr(p, "full_tensor") for p in net.parameters())
    weights, n_buckets, gathers_fp32 = _read_buckets(net, torch.float32)
    weights_bf16, _, gathers_bf16 = _read_buckets(net, torch.bfloat16)
    torch.save({"weights": weights, "n_buckets": n_buckets, "sharded": sharded, "architecture": rs.architecture(net),
                "gathers_fp32": gathers_fp32, "weights_bf16": weights_bf16, "gathers_bf16": gathers_bf16},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1])
