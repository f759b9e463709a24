"""train.py: command line, data order, FSDP2 equivalence, learning, resume after a kill."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import data
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run(args, env=ENV, **kw):
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kw)


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# --- command line

def test_domains_comma_list_parses_as_several():
    assert train.cli(["--domains", "math,code"]).domains == ("math", "code")
    assert train.cli(["--domains", "math", "code,if"]).domains == ("math", "code", "if")


def test_unknown_domain_lists_valid_ones():
    with pytest.raises(train.UserError, match="valid: math, code, science, if"):
        train.Config(domains=("math", "chess"))


# The paper's settings (M2RL, arXiv 2602.12566, and its authors' README table: batch, rollouts, steps per run).
# Loss: each sample's token mean, divided by the global batch ("sequence"); KL 0; TIS cap 2.
PAPER_GRPO = dict(prompts_per_step=128, group_size=16, lr=2e-6, adam_betas=(0.9, 0.98), weight_decay=0.1,
                  grad_clip=1.0, clip_low=0.2, clip_high=0.28, loss_norm="sequence", kl_coef=0.0, tis_cap=2.0)
PAPER_RUNS = {
    "paper": {**PAPER_GRPO, "steps": 200},                     # each expert
    "paper-mixed": {**PAPER_GRPO, "steps": 400},               # the mixed multi-task model
    "paper-opd": {**PAPER_GRPO, "steps": 200, "prompts_per_step": 256, "group_size": 4, "lr": 1e-6,
                  "clip_high": 0.2},                           # MT-OPD
}


@pytest.mark.parametrize("preset", list(PAPER_RUNS))
def test_paper_presets_are_the_papers(preset):
    cfg = train.cli(["--preset", preset, "--domains", "math"])
    assert {k: getattr(cfg, k) for k in PAPER_RUNS[preset]} == PAPER_RUNS[preset]
    assert cfg.preset == preset


def test_paper_preset_and_override():
    cfg = train.cli(["--preset", "paper", "--lr", "1e-6", "--domains", "math"])
    assert (cfg.prompts_per_step, cfg.group_size, cfg.lr, cfg.steps) == (128, 16, 1e-6, 200)
    assert (cfg.clip_low, cfg.clip_high, cfg.kl_coef, cfg.weight_decay) == (0.2, 0.28, 0.0, 0.1)
    assert cfg.grader == "paper" and train.cli(["--preset", "paper-opd"]).grader == "paper"
    assert train.cli(["--domains", "math"]).grader == "paper"            # the small world writes the paper's form
    assert train.cli(["--preset", "paper", "--grader", "lenient"]).grader == "lenient"
    with pytest.raises(SystemExit):
        train.cli(["--preset", "nope"])


def _lengths(*lengths):
    return [{"prompt_ids": [1] * 2, "completion_ids": [1] * (n - 2)} for n in lengths]


@pytest.mark.parametrize("lengths,max_seqs,max_tokens,expect", [
    ((5, 9, 3, 4, 8), 2, 0, [[0, 1], [2, 3], [4]]),            # no cap: runs of max_seqs, in order
    ((5, 9, 3, 4, 8), 64, 18, [[1, 4], [0, 3, 2]]),            # longest first: 2 x 9 = 18, then 3 x 5 = 15
    ((5, 9, 3, 4, 8), 2, 18, [[1, 4], [0, 3], [2]]),           # the count cap still applies
    ((20, 5, 5), 64, 16, [[0], [1, 2]]),                       # longer than the cap: alone
    ((6, 6, 6, 6), 64, 12, [[0, 1], [2, 3]]),                  # equal lengths keep their order
    ((), 8, 100, []),
])
def test_micro_batches_cap_sequences_and_padded_tokens(lengths, max_seqs, max_tokens, expect):
    plan = train.micro_batches(_lengths(*lengths), max_seqs, max_tokens)
    assert plan == expect
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))


@pytest.mark.parametrize("preset", list(PAPER_RUNS))
def test_paper_presets_fit_an_80gb_gpu(preset):
    """Activation checkpointing on and micro-batches capped at 65,536 padded tokens (train.py's estimate for
    Qwen3-4B: about 40 GB per GPU in training; without them about 290 GB of activations per micro-batch). Every
    micro-batch of a step of full-length completions stays under the cap."""
    cfg = train.cli(["--preset", preset, "--domains", "math"])
    assert cfg.activation_checkpointing and cfg.micro_batch_tokens == 65_536
    full = _lengths(*[256 + cfg.max_new_tokens] * (cfg.prompts_per_step * cfg.group_size // 8))   # one GPU's share
    plan = train.micro_batches(full, cfg.micro_batch, cfg.micro_batch_tokens)
    assert max(len(b) for b in plan) * (256 + cfg.max_new_tokens) <= 65_536
    assert len(plan) == math.ceil(len(full) / (65_536 // (256 + cfg.max_new_tokens)))


def test_token_capped_micro_batches_give_the_same_gradient(monkeypatch):
    """Grouping by length changes the passes, not the gradient: a cap of 8 padded tokens (4 passes, longest
    first) gives the gradient of one pass over all five samples, and no pass is larger than the cap."""
    import model as modeling
    samples = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 2]}, {"prompt_ids": [5, 6], "completion_ids": [10, 2]},
               {"prompt_ids": [5], "completion_ids": [11, 12, 13, 14, 15, 2]}, {"prompt_ids": [7, 8], "completion_ids": [2]},
               {"prompt_ids": [9], "completion_ids": [3, 2]}]   # lengths 6, 4, 7, 3, 3
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.4])
    passes, real = [], train.pack
    monkeypatch.setattr(train, "pack", lambda chunk, *a: (passes.append(
        (len(chunk), max(len(s["prompt_ids"]) + len(s["completion_ids"]) for s in chunk))), real(chunk, *a))[1])
    grads = []
    for cap in (0, 8):
        net = modeling.load_model("tiny")
        cfg = train.Config(domains=("math",), micro_batch_tokens=cap, max_new_tokens=6)
        train.train_on(net, samples, adv, cfg, 0, "cpu", denom=5.0,
                       n_micro=len(train.micro_batches(samples, cfg.micro_batch, cap)))
        grads.append({k: p.grad for k, p in net.named_parameters()})
    assert passes == [(5, 7), (1, 7), (1, 6), (2, 4), (1, 3)]   # uncapped: one pass; capped: 7 | 6 | 4 3 | 3
    # fp32 rounding: passes of other shapes add up in other orders, so an element can differ by a few 1e-6 of the
    # tensor's largest entry (6.4e-6 on an embedding gradient of max 2.96 with the small world's base); a wrong
    # gradient differs by the order of the gradient itself
    for k in grads[0]:
        scale = grads[0][k].abs().max().item()
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5 * scale + 1e-7, rtol=1e-5, msg=k)


def test_weight_decay_spares_1d_parameters():
    """Megatron's rule: AdamW decays the matrices only. With zero gradients Adam's step is 0, so one step scales
    each matrix by exactly 1 - lr * wd and leaves the norm weights (the tiny Qwen3's 1-D parameters) as they were."""
    import model as modeling
    net = modeling.load_model("tiny")
    groups = train.param_groups(net, 0.5)
    names = {id(p): n for n, p in net.named_parameters()}
    assert {names[id(p)] for p in groups[1]["params"]} == {n for n, _ in net.named_parameters() if "norm" in n}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(names)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(groups, lr=0.1)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in net.named_parameters():
        want = before[n] if "norm" in n else before[n] * (1 - 0.1 * 0.5)
        torch.testing.assert_close(p.detach(), want, rtol=1e-6, atol=0, msg=n)


def test_step_metrics_count_prompts_per_domain_and_their_running_totals():
    cfg = train.Config(domains=("math", "code"), group_size=2)
    seen = {}

    def step(domains):   # one prompt per entry, each sampled group_size times
        srows = [{"domain": d} for d in domains for _ in range(cfg.group_size)]
        samples = [{"completion_ids": [1, 2], "truncated": False} for _ in srows]
        results = [{"reward": 0.0, "error": None} for _ in srows]
        return train.step_metrics(samples, srows, results, torch.zeros(len(srows)),
                                  torch.zeros(len(domains), dtype=torch.bool), dict.fromkeys(train.TOTALS, 0.0),
                                  cfg, torch.device("cpu"), seen)

    m1 = step(["math", "code", "math", "math"])
    assert (m1["prompts/math"], m1["prompts/code"], m1["prompts_total/math"], m1["prompts_total/code"]) == (3, 1, 3, 1)
    m2 = step(["code"] * 4)
    assert (m2["prompts/math"], m2["prompts/code"], m2["prompts_total/math"], m2["prompts_total/code"]) == (0, 4, 3, 5)
    assert seen == {"math": 3, "code": 5}


# --- data order

def test_split_counts_and_mix():
    assert data.split_counts(10, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 5, "b": 3, "c": 2} or \
        data.split_counts(10, {"a": 0.5, "b": 0.25, "c": 0.25}) == {"a": 5, "b": 2, "c": 3}
    assert sum(data.split_counts(7, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}).values()) == 7
    assert data.mix_weights("proportional", ("math", "code")) is None
    assert data.mix_weights("uniform", ("math", "code")) == {"math": 0.5, "code": 0.5}
    assert data.mix_weights("math=3,code=1", ("math", "code")) == {"math": 0.75, "code": 0.25}
    with pytest.raises(ValueError, match="not among --domains"):
        data.mix_weights("science=1", ("math", "code"))


def test_batch_for_step_is_deterministic_and_follows_ratios():
    pools = {"math": [{"id": f"m{i}", "domain": "math"} for i in range(30)],
             "code": [{"id": f"c{i}", "domain": "code"} for i in range(10)]}
    a = data.batch_for_step(pools, None, 3, 8, seed=1)
    assert a == data.batch_for_step(pools, None, 3, 8, seed=1)
    assert a != data.batch_for_step(pools, None, 4, 8, seed=1)
    # the pooled stream visits every row once per epoch (40 rows = 5 steps of 8)
    seen = [r["id"] for s in range(5) for r in data.batch_for_step(pools, None, s, 8, seed=1)]
    assert sorted(seen) == sorted(r["id"] for p in pools.values() for r in p)
    w = data.mix_weights("uniform", ("math", "code"))
    for step in range(6):
        b = data.batch_for_step(pools, w, step, 8, seed=1)
        assert sum(r["domain"] == "code" for r in b) == 4


# --- FSDP2: two processes give the single-process gradient

@pytest.mark.parametrize("norm,mode", [("token", ""), ("sequence", ""), ("sequence", "paper")])
def test_fsdp2_two_processes_match_one(tmp_path, norm, mode):
    """paper: activation checkpointing inside FSDP2's blocks and token-capped micro-batches (as --preset paper)
    give the same gradients."""
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    r = run([sys.executable, "tests/fsdp_grads.py", str(one), norm, mode])
    assert r.returncode == 0, r.stderr[-2000:]
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tests/fsdp_grads.py",
             str(two), norm, mode])
    assert r.returncode == 0, r.stderr[-2000:]
    g1, g2 = torch.load(one), torch.load(two)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for k in g1:
        assert g1[k].abs().max() > 0, k
        torch.testing.assert_close(g2[k], g1[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def fsdp_no_grad(tmp_path_factory):
    """tests/fsdp_no_grad.py on two gloo processes, once for the tests below; rank 0's results."""
    out = tmp_path_factory.mktemp("fsdp_no_grad") / "out.pt"
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tests/fsdp_no_grad.py", str(out)],
            timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out)


def test_fsdp2_frozen_models_are_sharded_after_their_forward(fsdp_no_grad):
    """The reference and teacher (no backward, so nothing else reshards them) hold no unsharded parameter once
    a micro-batch has used them, and resharding between passes leaves their log-probs unchanged."""
    got = fsdp_no_grad
    assert got["ref"] == [] and got["teacher"] == [], (got["ref"], got["teacher"])
    assert got["policy"] == []   # the trainable root is resharded by its backward
    import model as modeling
    from fsdp_grads import fixed_batch
    samples, _ = fixed_batch(8, 1024)
    ids, attn, targets, _ = train.pack(samples, 0, "cpu")
    want = train.frozen_logprobs(modeling.load_model("tiny-init", seed=1).eval(), ids, attn, targets, 0.7)
    for logp in got["ref_logp"]:
        torch.testing.assert_close(logp, want, atol=1e-5, rtol=1e-5)


def test_fsdp2_sync_into_a_bf16_engine_gathers_bf16_shards(fsdp_no_grad):
    """HF rollouts on a GPU copy the fp32 master weights into a bf16 engine: each shard is cast before its
    all-gather, so the gather moves bf16 (half the bytes), and the engine gets the weights rounded once."""
    import model as modeling
    ref = dict(modeling.load_model("tiny").named_parameters())
    gathers = fsdp_no_grad["sync_gathers"]
    assert {dtype for dtype, _ in gathers} == {torch.bfloat16}, gathers
    assert len(gathers) == len(ref)   # one all-gather per parameter, of this rank's bf16 shard
    for name, p in fsdp_no_grad["engine"].items():
        assert torch.equal(p, ref[name].detach().to(torch.bfloat16)), name


def test_fsdp2_old_logprobs_with_unequal_micro_batch_counts(fsdp_no_grad):
    """minibatches > 1: the old log-prob pass runs as many forwards on every rank (padding with empty ones), so a
    rank with fewer micro-batches does not leave FSDP's all-gathers unmatched; rank 0's values are the
    unsharded model's."""
    import model as modeling
    from fsdp_grads import fixed_batch
    samples, _ = fixed_batch(8, 1024)
    want = train._logps(modeling.load_model("tiny"), samples[:5], train.Config(domains=("math",), micro_batch=2), 0,
                        "cpu")
    got = fsdp_no_grad["old_logps"]
    assert len(got) == 5
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# --- end to end

def test_reward_rises_on_learnable_task(tmp_path):
    """A short GRPO run of the default preset on the embedded instruction-following prompts: the SFT base plans
    on about half its completions and is mostly right when it does, so the reward rises as the policy learns to
    plan (measured, seed 0: about 0.35 over the first 5 steps, 0.7 over the last 5)."""
    r = run([sys.executable, "train.py", "--domains", "if", "--steps", "20", "--out-dir", str(tmp_path),
             "--save-every", "20", "--seed", "0"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(tmp_path / "if")
    assert len(m) == 20
    first = sum(x["reward"] for x in m[:5]) / 5
    last = sum(x["reward"] for x in m[-5:]) / 5
    assert last > first + 0.15, (first, last)
    assert all(x["truncated"] < 0.2 for x in m)
    # the run directory is an HF model that merge.py / analyze.py can load
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(tmp_path / "if")
    info = json.load(open(tmp_path / "if" / "run.json"))
    assert info["steps_done"] == 20 and info["device_hours"] > 0


def test_torchrun_two_processes_mixed_domains(tmp_path):
    r = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py",
             "--domains", "math,code", "--mix", "uniform", "--steps", "2", "--prompts-per-step", "4", "--group-size", "4",
             "--max-new-tokens", "16", "--out-dir", str(tmp_path)], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(tmp_path / "math-code")
    assert [x["step"] for x in m] == [1, 2]
    assert {"reward/math", "reward/code", "time/rollout", "tokens_per_s", "grad_norm"} <= set(m[0])
    # the domain mix of each step, over both ranks (uniform: 2 + 2), and its running totals
    assert [(x["prompts/math"], x["prompts/code"]) for x in m] == [(2, 2), (2, 2)]
    assert [(x["prompts_total/math"], x["prompts_total/code"]) for x in m] == [(2, 2), (4, 4)]


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    args = ["--domains", "math", "--steps", "8", "--save-every", "2", "--prompts-per-step", "4",
            "--group-size", "4", "--max-new-tokens", "16", "--run-name", "r"]
    full = run([sys.executable, "train.py", *args, "--out-dir", str(tmp_path / "a")], timeout=600)
    assert full.returncode == 0, full.stderr[-3000:]
    # kill -9 as soon as the step-4 checkpoint exists, then resume
    out_b = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "train.py", *args, "--out-dir", str(out_b)], cwd=ROOT, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out_b / "r" / "checkpoints" / "step_000004" / "trainer_state.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt.exists()
    killed_at = len(metrics(out_b / "r"))
    res = run([sys.executable, "train.py", *args, "--out-dir", str(out_b), "--resume"], timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ma, mb = metrics(tmp_path / "a" / "r"), metrics(out_b / "r")
    assert [x["step"] for x in mb] == list(range(1, 9)), killed_at
    for xa, xb in zip(ma, mb):
        assert xa["prompts_total/math"] == xb["prompts_total/math"] == 4 * xa["step"]   # the total survives resume
        assert xa["reward"] == pytest.approx(xb["reward"], abs=1e-6)
        assert xa["loss"] == pytest.approx(xb["loss"], rel=1e-4, abs=1e-6)
    from safetensors.torch import load_file
    wa = load_file(tmp_path / "a" / "r" / "model.safetensors")
    wb = load_file(out_b / "r" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)


def _fake_dist(site, dist_name: str, version: str, files: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata and transformers see it: its files and a dist-info."""
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
    info = site / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in files))


@pytest.mark.parametrize("installed,expect", [
    ("flash-attn-4", "sdpa"),               # sglang's dependency: a flash_attn namespace package, no FA2
    ("flash-attn", "flash_attention_2"),    # FlashAttention 2 itself
    ("both", "flash_attention_2"),          # FA2 installed over flash-attn-4 (requirements-gpu.txt's order)
])
def test_attention_implementation_wants_flash_attention_2_itself(tmp_path, installed, expect):
    """Run in a fresh interpreter with a fake site directory and CUDA reported present, as on a GPU node.
    (Without CUDA, or with no flash_attn at all, the answer is sdpa: the last assert.)"""
    fa2 = {"flash_attn/__init__.py": "__version__ = '2.8.3.post2'\n"}
    fa4 = {"flash_attn/cute/__init__.py": "", "flash_attn/cute/interface.py": ""}
    if installed in ("flash-attn-4", "both"):
        _fake_dist(tmp_path, "flash-attn-4", "4.0.0b40", fa4)
    if installed in ("flash-attn", "both"):
        _fake_dist(tmp_path, "flash-attn", "2.8.3.post2", fa2)
    code = ("import torch; torch.cuda.is_available = lambda: True\n"
            "import importlib.util, train\n"
            "print(importlib.util.find_spec('flash_attn') is not None, train.attention_implementation(torch.device('cuda')))")
    r = run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["True", expect]   # a bare find_spec('flash_attn') cannot tell FA4 from FA2
    assert train.attention_implementation(torch.device("cpu")) == "sdpa"


def test_activation_checkpointing_flag_trains_under_the_pinned_transformers(tmp_path, monkeypatch):
    """--activation-checkpointing (on in the paper presets) with transformers 5.19.0, sglang's pin: a step runs
    and every decoder layer of the policy is checkpointed."""
    seen = []
    real = train.enable_activation_checkpointing
    monkeypatch.setattr(train, "enable_activation_checkpointing", lambda m: (real(m), seen.append(m)))
    cfg = train.Config(domains=("math",), steps=1, prompts_per_step=2, group_size=2, activation_checkpointing=True,
                       out_dir=str(tmp_path), save_every=100)
    train.main(cfg)
    assert [x["step"] for x in metrics(tmp_path / "math")] == [1]
    (policy,) = seen
    assert policy.is_gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in policy.model.layers)


def test_bad_data_path_fails_before_work(tmp_path):
    r = run([sys.executable, "train.py", "--domains", "math", "--data", str(tmp_path / "missing.jsonl"),
             "--out-dir", str(tmp_path)])
    assert r.returncode != 0
    assert "missing.jsonl" in r.stderr
    assert not (tmp_path / "math").exists()


def test_non_finite_steps_are_skipped_then_stop(tmp_path, monkeypatch):
    real = train.policy_loss_torch

    def nan_loss(*a, **k):
        loss, stats = real(*a, **k)
        return loss * float("nan"), stats

    monkeypatch.setattr(train, "policy_loss_torch", nan_loss)
    cfg = train.Config(domains=("math",), steps=10, max_bad_steps=3, prompts_per_step=2, group_size=2,
                       out_dir=str(tmp_path), save_every=100)
    with pytest.raises(SystemExit, match="3 steps in a row had a non-finite"):
        train.main(cfg)
    m = metrics(tmp_path / "math")
    assert [x["skipped"] for x in m] == [True, True, True]
    # nothing was applied: the weights still equal the starting model saved at step 0
    from safetensors.torch import load_file
    import model as modeling
    start = modeling.load_model("tiny")
    saved = load_file(tmp_path / "math" / "checkpoints" / "step_000000" / "model.safetensors")
    for k, v in start.state_dict().items():
        if k in saved:
            torch.testing.assert_close(saved[k], v)


def test_mt_opd_learns_a_planted_teacher_preference(tmp_path):
    """A teacher nudged to always plan on math (p(hasty), the chance that "<think>" is followed at once by
    "</think>", from about 0.5 to under 0.1): distilling it on-policy brings the student's reverse KL to it
    down and the student's p(hasty) from about 0.5 below 0.3 (measured: 0.50 -> 0.1, KL 0.3 -> 0.05 in 20 steps)."""
    import data
    import model as modeling
    torch.manual_seed(0)
    tok, teacher = modeling.load_tokenizer("tiny"), modeling.load_model("tiny")
    rows = data.load("embedded", ["math"], "train")[:32]
    prompts = [tok(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                   add_special_tokens=False)["input_ids"] for r in rows]
    careful = [tok(r["reference"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    ids, attn, targets, mask = train.pack([{"prompt_ids": p, "completion_ids": c} for p, c in zip(prompts, careful)],
                                          tok.pad_token_id, "cpu")
    close = tok.convert_tokens_to_ids("</think>")
    hasty = [p + [tok.convert_tokens_to_ids("<think>")] for p in prompts]
    h_ids, h_attn, _, _ = train.pack([{"prompt_ids": p, "completion_ids": [close]} for p in hasty], tok.pad_token_id, "cpu")

    def p_hasty(net):   # mean over prompts of p("</think>" right after "<think>")
        with torch.no_grad():
            logits = net(input_ids=h_ids, attention_mask=h_attn).logits.float()
        last = torch.tensor([len(p) - 1 for p in hasty])
        return logits[torch.arange(len(hasty)), last].softmax(-1)[:, close].mean().item()

    p_start = p_hasty(teacher)
    assert 0.3 < p_start < 0.7
    opt = torch.optim.Adam(teacher.parameters(), lr=1e-3)
    for _ in range(100):   # supervised on the careful completions until it (almost) always plans
        if p_hasty(teacher) < 0.05:
            break
        loss = -(train.token_logprobs(*train.final_hidden(teacher, ids, attn), targets) * mask).sum() / mask.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_hasty(teacher) < 0.1
    modeling.save_pretrained(teacher, tok, str(tmp_path / "teacher"))

    r = run([sys.executable, "train.py", "--domains", "math", "--teachers", f"math={tmp_path / 'teacher'}",
             "--steps", "20", "--save-every", "20", "--out-dir", str(tmp_path), "--run-name", "opd"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = metrics(tmp_path / "opd")
    first = sum(x["teacher_kl"] for x in m[:3]) / 3
    last = sum(x["teacher_kl"] for x in m[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert p_hasty(modeling.load_model(str(tmp_path / "opd"))) < 0.3


def test_teachers_must_cover_every_domain():
    with pytest.raises(train.UserError, match="no teacher for domain"):
        train.Config(domains=("math", "code"), teachers="math=out/math")
    with pytest.raises(train.UserError, match="DOMAIN=PATH"):
        train.Config(domains=("math",), teachers="chess=out/x")
    assert train.teacher_paths("math=out/m,code=out/c") == {"math": "out/m", "code": "out/c"}


def test_sglang_rollout_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(train.UserError, match="--rollout sglang needs CUDA"):
        train.main(train.Config(domains=("math",), rollout="sglang", out_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())   # nothing written
