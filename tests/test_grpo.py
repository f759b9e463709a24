"""GRPO math in train.py against hand-computed values."""

import math

import pytest
import torch

import model
import train
from train import Config, group_advantages, k3_kl, masked_reduce, pack, policy_loss_torch, token_logprobs


def cfg(**kw):
    base = dict(domains=("math",), clip_low=0.2, clip_high=0.28, temperature=1.0, max_new_tokens=4, loss_norm="token")
    return Config(**{**base, **kw})


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735; group 2: all equal -> 0
    adv = group_advantages(r, 4, scale_std=True, eps=0.0 + 1e-6)
    s = math.sqrt(1 / 3)
    expect = torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])
    assert torch.allclose(adv, expect, atol=1e-5)
    drgrpo = group_advantages(r, 4, scale_std=False)
    assert torch.allclose(drgrpo, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_token_logprobs_by_hand():
    # identity weight: hidden are the logits
    hidden = torch.tensor([[[0.0, math.log(3.0)]]])          # probs 1/4, 3/4
    lp = token_logprobs(hidden, torch.eye(2), torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    lp_t2 = token_logprobs(hidden, torch.eye(2), torch.tensor([[1]]), temperature=2.0)
    p = math.sqrt(3) / (1 + math.sqrt(3))                    # logits halved
    assert lp_t2.item() == pytest.approx(math.log(p), abs=1e-6)


def test_k3_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(0.5)
    assert k3_kl(logp, ref).item() == pytest.approx(math.exp(d) - d - 1, abs=1e-7)
    assert k3_kl(ref, ref).item() == 0.0


def test_masked_reduce_variants():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_reduce(x, m, "token", 3).item() == pytest.approx(1 + 2 + 4)
    assert masked_reduce(x, m, "sequence", 3).item() == pytest.approx(1.5 + 4)
    assert masked_reduce(x, m, "constant", 3).item() == pytest.approx(7 / 3)


def _one_token(logits, target):
    """hidden = logits with an identity output weight, so logp is known exactly."""
    h = torch.tensor([[logits]], requires_grad=True)          # (1, 1, V)
    return h, torch.eye(len(logits)), torch.tensor([[target]]), torch.ones(1, 1)


@pytest.mark.parametrize("ratio,adv,clipped", [
    (1.5, 1.0, True),     # above 1 + 0.28 with positive advantage: clipped, no gradient
    (1.1, 1.0, False),    # inside the range
    (0.5, -1.0, True),    # below 1 - 0.2 with negative advantage: clipped
    (0.5, 1.0, False),    # below the range but positive advantage: min keeps the unclipped term
    (1.5, -1.0, False),   # above the range with negative advantage: unclipped term is the min
])
def test_clipped_surrogate_by_hand(ratio, adv, clipped):
    h, w, t, m = _one_token([0.3, -0.2, 0.1], 0)
    logp = torch.log_softmax(torch.tensor([0.3, -0.2, 0.1]), -1)[0].item()
    old = torch.tensor([[logp - math.log(ratio)]])
    loss, stats = policy_loss_torch(h, w, t, m, torch.tensor([adv]), old, cfg())
    c = min(max(ratio, 0.8), 1.28)
    assert loss.item() == pytest.approx(-min(ratio * adv, c * adv), abs=1e-5)
    assert stats["clip_frac"].item() == float(clipped)
    loss.backward()
    if clipped:
        assert h.grad.abs().max().item() == 0.0
    else:  # d(-ratio*adv)/dlogits = -adv * ratio * (onehot - softmax)
        p = torch.softmax(torch.tensor([0.3, -0.2, 0.1]), -1)
        expect = -adv * ratio * (torch.tensor([1.0, 0, 0]) - p)
        assert torch.allclose(h.grad[0, 0], expect, atol=1e-5)


def test_on_policy_gradient_is_policy_gradient():
    # old_logp=None: ratio 1, loss -adv, gradient -adv * dlogp
    h, w, t, m = _one_token([0.5, 0.0], 1)
    loss, _ = policy_loss_torch(h, w, t, m, torch.tensor([2.0]), None, cfg())
    assert loss.item() == pytest.approx(-2.0)
    loss.backward()
    p = torch.softmax(torch.tensor([0.5, 0.0]), -1)
    assert torch.allclose(h.grad[0, 0], -2.0 * (torch.tensor([0.0, 1.0]) - p), atol=1e-6)


def test_kl_and_importance_weight_terms():
    h, w, t, m = _one_token([0.0, 0.0], 0)                     # logp = log 0.5
    ref = torch.tensor([[math.log(0.25)]])
    loss, stats = policy_loss_torch(h, w, t, m, torch.tensor([1.0]), None, cfg(kl_coef=0.1), ref_logp=ref)
    d = math.log(0.5)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * (math.exp(d) - d - 1), abs=1e-6)
    assert stats["kl"].item() == pytest.approx(math.exp(d) - d - 1, abs=1e-6)
    loss_w, _ = policy_loss_torch(h, w, t, m, torch.tensor([1.0]), None, cfg(), is_weight=torch.tensor([[0.5]]))
    assert loss_w.item() == pytest.approx(-0.5, abs=1e-6)     # surrogate scaled by the weight


def test_per_token_advantages_broadcast():
    h = torch.zeros(1, 2, 2, requires_grad=True)
    loss, _ = policy_loss_torch(h, torch.eye(2), torch.tensor([[0, 1]]), torch.ones(1, 2),
                                torch.tensor([[1.0, -3.0]]), None, cfg())
    assert loss.item() == pytest.approx(-(1.0 - 3.0))


def test_pack_masks_completion_tokens_including_eos():
    s = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 2]}, {"prompt_ids": [5], "completion_ids": [9, 9, 2]}]
    ids, attn, targets, mask = pack(s, pad_id=0, device="cpu")
    assert ids.tolist() == [[5, 6, 7, 8, 2], [5, 9, 9, 2, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # targets are ids[:, 1:]; the mask covers exactly the completion tokens, EOS (2) included
    assert mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]
    assert [t for t, k in zip(targets[0].tolist(), mask[0].tolist()) if k] == [8, 2]
    assert [t for t, k in zip(targets[1].tolist(), mask[1].tolist()) if k] == [9, 9, 2]


def test_liger_matches_torch():
    pytest.importorskip("liger_kernel.chunked_loss")
    torch.manual_seed(0)
    B, T, H, V = 4, 6, 8, 11
    hidden0 = torch.randn(B, T, H)
    weight0 = torch.randn(V, H) * 0.5
    targets = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    mask[1, 4:] = 0
    mask[3, 2:] = 0
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2])
    with torch.no_grad():
        base = token_logprobs(hidden0, weight0, targets, 0.7)
    old = base + 0.3 * torch.randn(B, T)                     # ratios on both sides of the clip range
    ref = base + 0.2 * torch.randn(B, T)
    isw = torch.rand(B, T) * 2
    for norm in ("token", "sequence", "constant"):
        c = cfg(loss_norm=norm, kl_coef=0.05, temperature=0.7, max_new_tokens=T)
        grads = []
        for fn in (train.policy_loss_torch, train.policy_loss_liger):
            h = hidden0.clone().requires_grad_(True)
            w = weight0.clone().requires_grad_(True)
            loss, stats = fn(h, w, targets, mask, adv, old, c, ref_logp=ref, is_weight=isw)
            loss.backward()
            grads.append((loss.detach(), h.grad, w.grad, stats["clip_frac"], stats["kl"], stats["entropy"]))
        (l1, gh1, gw1, c1, k1, e1), (l2, gh2, gw2, c2, k2, e2) = grads
        assert torch.allclose(l1, l2, atol=1e-5), norm
        assert torch.allclose(gh1, gh2, atol=1e-5), norm
        assert torch.allclose(gw1, gw2, atol=1e-5), norm
        assert c1.item() == pytest.approx(c2.item(), abs=1e-4)
        assert k1.item() == pytest.approx(k2.item(), abs=1e-4)
        assert e1.item() > 1.0 and e2.item() == pytest.approx(e1.item(), rel=1e-5), norm   # Liger's entropy was 0


@pytest.mark.parametrize("rollout_logp", [None, -1.0])
def test_train_on_logs_the_same_entropy_on_the_liger_path(rollout_logp):
    """The entropy metric from train_on with Liger (the GPU default) equals the plain-torch path's, with the TIS
    pass (rollout log-probs: the entropy comes from that chunked pass) and without (Liger's loss makes its own)."""
    pytest.importorskip("liger_kernel.chunked_loss")
    samples = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 2], "truncated": False,
                "rollout_logp": None if rollout_logp is None else [rollout_logp] * 3},
               {"prompt_ids": [5, 6], "completion_ids": [10, 11, 12, 2], "truncated": False,
                "rollout_logp": None if rollout_logp is None else [rollout_logp] * 4}]
    totals = []
    for liger in (False, True):
        net = model.load_model("tiny-init")
        totals.append(train.train_on(net, samples, torch.tensor([1.0, -0.5]), cfg(liger=liger), 0, "cpu",
                                     denom=2.0, n_micro=1))
    assert totals[0]["tokens"] == totals[1]["tokens"] == 7
    assert totals[0]["entropy"] / 7 > 5.0   # near log(1024) = 6.9 for the random-init tiny model
    assert totals[1]["entropy"] == pytest.approx(totals[0]["entropy"], rel=1e-5)
    assert totals[1]["loss"] == pytest.approx(totals[0]["loss"], rel=1e-4, abs=1e-6)


# --- MT-OPD

def test_teacher_advantage_picks_each_samples_teacher():
    t = torch.tensor([[[-1.0, -2.0], [-3.0, -4.0]],     # teacher 0: rows of samples 0 and 1
                      [[-0.5, -0.5], [-0.25, -0.75]]])  # teacher 1
    student = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], requires_grad=True)
    adv = train.teacher_advantage(t, torch.tensor([1, 0]), student)
    # sample 0 under teacher 1, sample 1 under teacher 0, minus the student's log-probs
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.5], [-2.0, -3.0]]))
    assert not adv.requires_grad  # an advantage, not a path for gradients


def test_teacher_equal_to_student_gives_zero_advantage():
    torch.manual_seed(0)
    net = model.load_model("tiny").eval()
    other = model.load_model("tiny-init", seed=1).eval()
    samples = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 2], "domain": "math"},
               {"prompt_ids": [5, 6], "completion_ids": [10, 2], "domain": "code"}]
    ids, attn, targets, mask = train.pack(samples, 0, "cpu")
    cfg = train.Config()
    with torch.no_grad():
        student = train.token_logprobs(*train.final_hidden(net, ids, attn), targets)
    same = train.teacher_logp_advantage({"math": net, "code": net}, samples, ids, attn, targets, student, cfg, "cpu")
    # zero up to rounding: the teacher's pass is chunked (train.LOGP_CHUNK), the student's is one shot
    torch.testing.assert_close(same * mask, torch.zeros_like(mask), atol=1e-5, rtol=0)
    # a different teacher for one domain changes only that domain's samples
    mixed = train.teacher_logp_advantage({"math": net, "code": other}, samples, ids, attn, targets, student, cfg,
                                         "cpu")
    torch.testing.assert_close(mixed[0] * mask[0], torch.zeros_like(mask[0]), atol=1e-5, rtol=0)
    assert (mixed[1] * mask[1]).abs().sum() > 0.01


def test_activation_checkpointing_recomputes_and_leaves_gradients_unchanged():
    """train.enable_activation_checkpointing under the pinned transformers (5.19.0, sglang's pin, which has no
    activation_checkpointing_enable): a decoder layer's MLP runs twice per micro-batch (forward, then the
    recompute in backward; counted on a submodule, since the layer's own hooks need not run again), and the
    gradients are those of the plain model."""
    samples = [{"prompt_ids": [5, 6, 7], "completion_ids": [8, 9, 2]}, {"prompt_ids": [5, 6], "completion_ids": [10, 2]}]
    grads, calls = [], []
    for ckpt in (False, True):
        net = model.load_model("tiny").train()
        if ckpt:
            train.enable_activation_checkpointing(net)
            assert net.is_gradient_checkpointing
        n = [0]
        net.model.layers[0].mlp.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        train.train_on(net, samples, torch.tensor([1.0, -0.5]), cfg(), 0, "cpu", denom=5.0, n_micro=2)
        grads.append({k: p.grad.clone() for k, p in net.named_parameters()})
        calls.append(n[0])
    assert calls == [2, 4]   # two micro-batches; with checkpointing each forward is run again in backward
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-6, rtol=1e-5, msg=k)
        assert grads[0][k].abs().max() > 0, k


# --- log-prob passes without grad: chunked, never the full (B, T, V) logits

@pytest.mark.parametrize("chunk", [1, 5, 7, 24, 1000])
def test_chunked_token_logprobs_match_the_one_shot_formula(chunk):
    torch.manual_seed(0)
    B, T, H, V = 3, 8, 6, 50
    hidden, weight = torch.randn(B, T, H, requires_grad=True), torch.randn(V, H)
    targets = torch.randint(0, V, (B, T))
    one_shot = torch.log_softmax((hidden @ weight.T) / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    lp = token_logprobs(hidden, weight, targets, 0.7, chunk=chunk)
    torch.testing.assert_close(lp, one_shot, atol=1e-6, rtol=1e-6)
    (g_chunked,) = torch.autograd.grad(lp.sum(), hidden)   # the plain-torch uses still get their gradient
    (g_one,) = torch.autograd.grad(one_shot.sum(), hidden)
    torch.testing.assert_close(g_chunked, g_one, atol=1e-6, rtol=1e-5)
    lp2, ent = train.token_logprobs_entropy(hidden, weight, targets, 0.7, chunk=chunk)
    torch.testing.assert_close(lp2, one_shot.detach(), atol=1e-6, rtol=1e-6)
    p = torch.softmax((hidden @ weight.T) / 0.7, -1)
    torch.testing.assert_close(ent, -(p * p.log()).sum(-1).detach(), atol=1e-5, rtol=1e-5)


class _LargestNoGradTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any op makes while grad is off (the reference, teacher, old and TIS passes)."""

    def __init__(self):
        super().__init__()
        self.largest = (0, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not torch.is_grad_enabled():
            inputs = {a.untyped_storage().data_ptr() for a in torch.utils._pytree.tree_leaves((args, kwargs))
                      if isinstance(a, torch.Tensor)}
            for t in torch.utils._pytree.tree_leaves(out):
                # new memory only: a view (expand, transpose...) shares its input's storage
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs \
                        and t.numel() > self.largest[0]:
                    self.largest = (t.numel(), f"{func}: {tuple(t.shape)}")
        return out


def test_no_grad_logprob_passes_never_make_the_full_logits(monkeypatch):
    """With a reference model (KL), rollout log-probs (the TIS weight), minibatch old log-probs and an MT-OPD
    teacher, no op without grad allocates more than LOGP_CHUNK x V elements; the one-shot formula made
    B x T x V (here 4 x 40 x 1024, against 128 x 1024). Liger's own chunks are one sequence (40 x 1024), and it
    allocates a weight-sized gradient (1024 x 128), which sets the smallest chunk this test can use."""
    pytest.importorskip("liger_kernel.chunked_loss")
    monkeypatch.setattr(train, "LOGP_CHUNK", 128, raising=False)
    policy, ref = model.load_model("tiny"), model.load_model("tiny-init", seed=1).eval().requires_grad_(False)
    V = policy.config.vocab_size
    samples = [{"prompt_ids": list(range(5 + i, 15 + i)), "completion_ids": list(range(20, 50)) + [2],
                "truncated": False, "rollout_logp": [-1.0] * 31, "domain": "math"} for i in range(4)]
    c = cfg(liger=True, kl_coef=0.1, tis_cap=2.0, max_new_tokens=31)
    rec = _LargestNoGradTensor()
    with rec:
        train.train_on(policy, samples, torch.tensor([1.0, -1.0, 0.5, -0.5]), c, 0, "cpu", denom=4.0, n_micro=1,
                       ref_model=ref)
        old = train._logps(policy, samples, c, 0, "cpu")
        ids, attn, targets, _ = pack(samples, 0, "cpu")
        train.teacher_logp_advantage({"math": ref}, samples, ids, attn, targets, torch.zeros(targets.shape), c, "cpu")
    assert len(old) == 4 and targets.shape == (4, 40)
    assert rec.largest[0] <= 128 * V < 4 * 40 * V, rec.largest


# --- the plain-torch loss with grad (MT-OPD, or no Liger): chunked in forward and backward (issue 22)

def _one_shot_loss(hidden, weight, targets, mask, adv, old, c, ref=None, isw=None):
    """policy_loss_torch as it was before issue 22: the full (B, T, V) logits, kept by autograd."""
    logp_all = torch.log_softmax((hidden @ weight.T).float() / c.temperature, -1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0]
    ratio = torch.exp(logp - old)
    per_tok = -torch.min(ratio * adv[:, None], ratio.clamp(1 - c.clip_low, 1 + c.clip_high) * adv[:, None]) * isw
    per_tok = per_tok + c.kl_coef * k3_kl(logp, ref)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return masked_reduce(per_tok, mask, c.loss_norm, c.max_new_tokens), (entropy * mask).sum()


@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])
def test_chunked_loss_gradient_matches_the_one_shot_formula(monkeypatch, chunk):
    """Loss, entropy and the gradients of hidden states and output weight, with clipping on both sides, KL to a
    reference and an importance weight, against autograd through the full logits; chunks that do not divide the
    positions, and one larger than all of them."""
    monkeypatch.setattr(train, "LOGP_CHUNK", chunk)
    torch.manual_seed(0)
    B, T, H, V = 3, 8, 6, 50
    hidden0, weight0 = torch.randn(B, T, H), torch.randn(V, H) * 0.5
    targets = torch.randint(0, V, (B, T))
    mask = torch.ones(B, T)
    mask[1, 5:] = 0
    adv = torch.tensor([1.0, -0.7, 0.4])
    base = token_logprobs(hidden0, weight0, targets, 0.7)
    old, ref, isw = base + 0.3 * torch.randn(B, T), base + 0.2 * torch.randn(B, T), torch.rand(B, T) * 2
    c = cfg(temperature=0.7, kl_coef=0.05, loss_norm="sequence", max_new_tokens=T)
    got, want = [], []
    for fn, out in ((policy_loss_torch, got), (_one_shot_loss, want)):
        h, w = hidden0.clone().requires_grad_(True), weight0.clone().requires_grad_(True)
        loss, ent = fn(h, w, targets, mask, adv, old, c, ref, isw)
        loss.backward()
        out.extend([loss.detach(), ent["entropy"] if isinstance(ent, dict) else ent.detach(), h.grad, w.grad])
    for name, g, e in zip(("loss", "entropy", "d hidden", "d weight"), got, want):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=name)
    assert want[2].abs().max() > 0 and want[3].abs().max() > 0


def test_chunked_loss_peak_memory_at_qwen3_vocabulary():
    """policy_loss_torch forward and backward over 1,024 positions x 151,936 tokens (fp32, hidden 64, chunks of
    128), in a fresh process, measured as bench/logprobs.py measures (peak resident set above the inputs). One
    (B, T, V) fp32 tensor is 622 MB, and the formula before issue 22 kept several (4.7 GB at 2,048 positions);
    chunked, the peak is a few (128, V) tensors of 78 MB and the 39 MB weight gradient (about 160 MB)."""
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "bench", "logprobs.py"), "--positions", "1024",
                        "--hidden", "64", "--dtype", "float32", "--chunk", "128", "--variants", "chunked_grad"],
                       capture_output=True, text=True, cwd=root, env={**os.environ, "M2RL_BENCH_CHILD": "1"})
    assert r.returncode == 0, r.stderr
    x = json.loads(r.stdout.strip().splitlines()[-1])
    full = 1024 * 151936 * 4 / 2**20   # MB of one (B, T, V) fp32 tensor
    assert x["finite"]
    assert x["peak_mb"] < full / 2, x


def test_no_grad_passes_keep_no_hidden_states_and_no_kv_cache():
    """The frozen-model and old-log-prob forwards return neither every layer's hidden states nor a KV cache (in
    eval mode HF would build one from config.use_cache), and their hidden states are the final norm's output."""
    net = model.load_model("tiny").eval()
    assert net.config.use_cache   # so the pass must turn it off
    outs = []
    net.register_forward_hook(lambda m, a, out: outs.append(out))
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    attn = torch.ones_like(ids)
    with torch.no_grad():
        h, w = train.final_hidden(net, ids, attn)
        lp = train.frozen_logprobs(net, ids, attn, ids[:, 1:], 1.0)
        full = net(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    assert len(outs) == 3
    for out in outs[:2]:
        assert out.hidden_states is None and out.past_key_values is None
    torch.testing.assert_close(h, full.hidden_states[-1][:, :-1])
    torch.testing.assert_close(lp, torch.log_softmax(full.logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0],
                               atol=1e-5, rtol=1e-5)
    assert w is net.lm_head.weight
