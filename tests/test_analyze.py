"""analyze.py on constructed models and results whose answers are known by hand."""

import functools
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import analyze

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------ pass@k

@pytest.mark.parametrize("n,c,k,expected", [
    (4, 1, 1, 1 / 4),
    (4, 1, 2, 1 - 3 / 6),      # 1 - C(3,2)/C(4,2)
    (5, 2, 3, 1 - 1 / 10),     # 1 - C(3,3)/C(5,3)
    (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
    (4, 0, 4, 0.0),
    (4, 2, 3, 1.0),            # only 2 wrong samples: any 3 include a correct one
    (1, 1, 1, 1.0),
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert analyze.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_enumeration_of_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                assert analyze.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        analyze.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        analyze.pass_at_k(3, 1, 4)


def test_summarize_eval_hand_computed():
    recs = [
        {"model": "m", "benchmark": "b", "id": "1", "domain": "math", "rewards": [1, 0, 0, 0]},
        {"model": "m", "benchmark": "b", "id": "2", "domain": "math", "rewards": [1, 1, 0, 0]},
        {"model": "m", "benchmark": "b", "id": "3", "domain": "if", "rewards": [0.5, 0.5, 0.5, 0.5]},
    ]
    table, by_domain = analyze.summarize_eval(recs)
    cell = table["m"]["b"]
    assert cell["avg@k"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert cell["pass@1"] == pytest.approx((0.25 + 0.5 + 0) / 3)   # 0.5 is a partial score, not a pass
    assert cell["pass@k"] == pytest.approx((1 + 1 + 0) / 3)
    assert (cell["k"], cell["n"]) == (4, 3)
    assert by_domain["m"] == pytest.approx({"math": 0.375, "if": 0.5})
    md, csv_text = analyze.eval_tables(table, ["m"])
    assert "| m | 0.417 | 0.417 |" in md and "b avg@4" in csv_text


# ------------------------------------------------------------------------------------------------ weights

Q = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.1.mlp.up_proj.weight"


def base_tensors() -> dict:
    """A small state dict with every module type; values in +-[0.5, 1.5] so thresholds are clear-cut, on a grid
    of 1/64 so that adding the planted deltas is exact in fp32."""
    g = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (32, 16), "lm_head.weight": (32, 16), "model.norm.weight": (16,)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        shapes |= {p + "self_attn.q_proj.weight": (16, 16), p + "self_attn.k_proj.weight": (8, 16),
                   p + "self_attn.v_proj.weight": (8, 16), p + "self_attn.o_proj.weight": (16, 16),
                   p + "self_attn.q_norm.weight": (8,), p + "input_layernorm.weight": (16,),
                   p + "mlp.gate_proj.weight": (24, 16), p + "mlp.up_proj.weight": (24, 16),
                   p + "mlp.down_proj.weight": (16, 24)}
    out = {}
    for name, shape in shapes.items():
        mag = 0.5 + torch.randint(0, 65, shape, generator=g) / 64
        out[name] = torch.where(torch.rand(shape, generator=g) < 0.5, -mag, mag)
    return out


def planted(base: dict, updates: dict) -> dict:
    """Copy of base with updates {name: {flat index: delta or ("tiny", None)}}; "tiny" multiplies by 1+1e-5:
    a change at the exact threshold but far under the relative one."""
    out = {k: v.clone() for k, v in base.items()}
    for name, upd in updates.items():
        flat = out[name].view(-1)
        for i, d in upd.items():
            flat[i] = flat[i] * (1 + 1e-5) if d == "tiny" else flat[i] + d
    return out


def save(tmp_path: Path, name: str, tensors: dict) -> str:
    d = tmp_path / name
    d.mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(d / "model.safetensors"))
    return str(d)


UPD_A = {Q: {0: 1.0, 1: 2.0, 2: -1.0, 3: 0.5, 10: "tiny", 11: "tiny"}, UP: {5: 1.0, 6: -1.0}}
UPD_B = {Q: {2: -2.0, 3: -1.0, 4: 3.0}, UP: {6: -1.0, 7: 1.0}}


@pytest.fixture(scope="module")
def planted_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    base = base_tensors()
    return {"base": save(tmp, "base", base), "a": save(tmp, "a", planted(base, UPD_A)),
            "b": save(tmp, "b", planted(base, UPD_B)), "same": save(tmp, "same", base), "tmp": tmp,
            "tensors": base}


def test_weights_identical_model_changes_nothing(planted_models):
    res = analyze.compare_weights(planted_models["base"], {"same": planted_models["same"]}, progress=False)
    for thr in ("exact", "rel"):
        assert all(v == 1.0 for v in res["sparsity"]["same"][thr].values())
        assert all(v == 1.0 for v in res["layers"]["same"][thr])
    assert res["pairs"] == []


def test_weights_planted_updates_exact_numbers(planted_models):
    pm = planted_models
    res = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"], "same": pm["same"]},
                                  proj_seeds=(0, 1), progress=False)
    n_q, n_up = 2 * 16 * 16, 2 * 24 * 16   # two layers of each type
    sp = res["sparsity"]
    assert sp["a"]["exact"]["q"] == 1 - 6 / n_q and sp["a"]["rel"]["q"] == 1 - 4 / n_q
    assert sp["b"]["exact"]["q"] == sp["b"]["rel"]["q"] == 1 - 3 / n_q
    assert sp["a"]["rel"]["up"] == 1 - 2 / n_up and sp["a"]["rel"]["k"] == 1.0
    assert sp["a"]["rel"]["attention"] == 1 - 4 / res["n_params"]["attention"]
    assert sp["a"]["exact"]["all"] == 1 - 8 / res["n_params"]["all"]
    # per layer: q (layer 0) and up (layer 1) each hold their own changes
    layer_n = [sum(v.numel() for k, v in pm["tensors"].items() if f"layers.{i}." in k) for i in range(2)]
    assert res["layers"]["a"]["rel"] == [1 - 4 / layer_n[0], 1 - 2 / layer_n[1]]
    assert res["layers"]["a"]["exact"] == [1 - 6 / layer_n[0], 1 - 2 / layer_n[1]]

    ab = next(p for p in res["pairs"] if (p["a"], p["b"]) == ("a", "b"))
    q, up, all_ = ab["rel"]["q"], ab["rel"]["up"], ab["rel"]["all"]
    # q: A = {0,1,2,3}, B = {2,3,4}; overlap {2,3} with deltas A (-1, 0.5), B (-2, -1)
    assert q["jaccard"] == 2 / 5 and q["a_in_b"] == 2 / 4 and q["b_in_a"] == 2 / 3
    assert q["sign_agree"] == 1 / 2
    assert q["cos"] == pytest.approx((2 - 0.5) / math.sqrt((1 + 0.25) * (4 + 1)), abs=1e-12)
    # the exact threshold adds A's two tiny changes, outside B
    assert ab["exact"]["q"]["jaccard"] == 2 / 7 and ab["exact"]["q"]["a_in_b"] == 2 / 6
    # random masks of the same densities in one tensor: dA dB / (dA + dB - dA dB)
    n0 = 16 * 16  # the q tensor of layer 0; layer 1's q tensor has no change and adds nothing
    dA, dB = 4 / n0, 3 / n0
    assert q["jaccard_rand"] == pytest.approx(dA * dB / (dA + dB - dA * dB), rel=1e-12)
    assert q["a_in_b_rand"] == pytest.approx(dB, rel=1e-12)
    # up: A = {5,6}, B = {6,7}; overlap {6} with deltas -1, -1
    assert up["jaccard"] == 1 / 3 and up["sign_agree"] == 1.0 and up["cos"] == pytest.approx(1.0)
    # all parameters pooled: overlap q{2,3} + up{6}
    assert all_["jaccard"] == 3 / 8 and all_["overlap"] == 3
    assert all_["sign_agree"] == 2 / 3
    assert all_["cos"] == pytest.approx((2 - 0.5 + 1) / math.sqrt((1.25 + 1) * (5 + 1)), abs=1e-12)
    n1 = 24 * 16
    e_inter = n0 * dA * dB + n1 * (2 / n1) * (2 / n1)
    e_union = n0 * (dA + dB - dA * dB) + n1 * (4 / n1 - 4 / n1 ** 2)
    assert all_["jaccard_rand"] == pytest.approx(e_inter / e_union, rel=1e-12)
    # cosine of the whole update vectors: |dA|^2 = 1+4+1+.25+1+1 (+ the tiny ones), |dB|^2 = 4+1+9+1+1
    assert all_["cos_full"] == pytest.approx(2.5 / math.sqrt(8.25 * 16), abs=1e-9)
    # a model with no update: no overlap, cosine undefined
    a_same = next(p for p in res["pairs"] if (p["a"], p["b"]) == ("a", "same"))
    assert a_same["rel"]["all"]["jaccard"] == 0 and a_same["rel"]["all"]["jaccard_rand"] == 0
    assert math.isnan(a_same["rel"]["all"]["cos"])


def test_weights_chunking_and_shards_do_not_change_exact_statistics(planted_models):
    pm = planted_models
    ref = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"]}, proj_seeds=(), progress=False)
    # chunks of 40 elements split every tensor into several row blocks
    small = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"]}, proj_seeds=(), chunk_elems=40,
                                    progress=False)
    # model b as two shards with an index, like save_pretrained(max_shard_size=...)
    tensors = planted(pm["tensors"], UPD_B)
    names = sorted(tensors)
    d = pm["tmp"] / "b_sharded"
    d.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(d / f))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}))
    sharded = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": str(d)}, proj_seeds=(), progress=False)
    for other in (small, sharded):
        assert other["sparsity"] == ref["sparsity"] and other["layers"] == ref["layers"]
        for p, r in zip(other["pairs"], ref["pairs"]):
            for thr in ("exact", "rel"):
                for sc, st in r[thr].items():
                    for key, v in st.items():
                        assert p[thr][sc][key] == pytest.approx(v, rel=1e-12, nan_ok=True), (sc, key)


def test_tensor_chunks_bound_memory(tmp_path):
    d = save(tmp_path, "big", {"w": torch.zeros(1000, 30)})
    h = analyze.open_checkpoint(d)
    chunks = list(analyze.tensor_chunks([h], "w", (1000, 30), 3000))
    assert all(c[0].numel() <= 3000 for _, c in chunks) and sum(c[0].numel() for _, c in chunks) == 30000
    assert [off for off, _ in chunks][:2] == [0, 3000]


def test_weights_projection_cosine_close_to_exact(tmp_path):
    """Dense correlated updates on one 4096-element tensor: the 256-dim sketch cosine is an estimate of the
    exact cosine with std about (1 - cos^2)/sqrt(256) ~ 0.04 here (0.042 measured over 400 seeds); stated
    tolerance: every seed within 0.15 (3.6 std) of the exact value, the mean of 16 seeds within 0.05 (5 std)."""
    g = torch.Generator().manual_seed(1)
    w0 = 1 + torch.rand(64, 64, generator=g)
    x, y = torch.randn(64, 64, generator=g), torch.randn(64, 64, generator=g)
    base = save(tmp_path, "base", {UP: w0})
    a = save(tmp_path, "a", {UP: w0 + 0.1 * x})
    b = save(tmp_path, "b", {UP: w0 + 0.1 * (0.6 * x + 0.8 * y)})
    res = analyze.compare_weights(base, {"a": a, "b": b}, proj_seeds=tuple(range(16)), progress=False)
    st = res["pairs"][0]["rel"]["all"]
    exact = float((x * (0.6 * x + 0.8 * y)).sum() / (x.norm() * (0.6 * x + 0.8 * y).norm()))
    assert st["cos_full"] == pytest.approx(exact, abs=1e-5)   # fp32 storage of w0 + d rounds the deltas
    # the overlap drops positions whose update is under 1e-3 of the weight in either model
    wa, wb = (w0 + 0.1 * x).double(), (w0 + 0.1 * (0.6 * x + 0.8 * y)).double()
    da, db = wa - w0.double(), wb - w0.double()
    both = (da.abs() > 1e-3 * torch.maximum(wa.abs(), w0.abs())) & (db.abs() > 1e-3 * torch.maximum(wb.abs(), w0.abs()))
    assert st["overlap"] == int(both.sum()) < 64 * 64
    assert st["cos"] == pytest.approx(float((da * db)[both].sum() / (da[both].norm() * db[both].norm())), abs=1e-12)
    assert max(abs(c - st["cos"]) for c in st["cos_proj_seeds"]) < 0.15
    assert abs(st["cos_proj"] - st["cos"]) < 0.05
    assert st["cos_proj_std"] > 0   # different seeds are different projections
    again = analyze.compare_weights(base, {"a": a, "b": b}, proj_seeds=(3,), progress=False)
    assert again["pairs"][0]["rel"]["all"]["cos_proj_seeds"][0] == st["cos_proj_seeds"][3]


def test_sketch_rows_are_orthogonal():
    bucket, sign = analyze.sketch(0, "t", 0, 5000, 256, "cpu")
    P = torch.zeros(256, 5000, dtype=torch.float64)
    P[bucket, torch.arange(5000)] = sign
    gram = P @ P.T
    assert torch.equal(gram, torch.diag(torch.diag(gram)))   # disjoint supports: exactly orthogonal rows
    assert torch.diag(gram).sum() == 5000


def test_weights_mismatched_models_fail_clearly(planted_models, tmp_path):
    pm = planted_models
    tensors = dict(pm["tensors"])
    del tensors[Q]
    with pytest.raises(ValueError, match="missing .*q_proj"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "missing", tensors)}, progress=False)
    tensors = dict(pm["tensors"]) | {"extra.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match="extra .*extra.weight"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "extra", tensors)}, progress=False)
    tensors = dict(pm["tensors"]) | {UP: torch.zeros(24, 8)}
    with pytest.raises(ValueError, match=r"up_proj.weight has shape \[24, 8\].*\[24, 16\]"):
        analyze.compare_weights(pm["base"], {"x": save(tmp_path, "shape", tensors)}, progress=False)
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        analyze.compare_weights(str(tmp_path / "nowhere"), {"x": pm["a"]}, progress=False)


def test_module_types_of_a_qwen3_checkpoint():
    names = {"model.embed_tokens.weight": "embed", "lm_head.weight": "lm_head", "model.norm.weight": "norm",
             "model.layers.3.self_attn.k_norm.weight": "norm", "model.layers.3.self_attn.v_proj.weight": "v",
             "model.layers.3.post_attention_layernorm.weight": "norm", "model.layers.3.mlp.down_proj.weight": "down",
             "model.layers.3.self_attn.o_proj.bias": "o"}
    assert {n: analyze.module_type(n) for n in names} == names
    assert analyze.layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert analyze.layer_index("model.norm.weight") is None


def test_weights_plots_and_json(planted_models, tmp_path):
    pm = planted_models
    res = analyze.compare_weights(pm["base"], {"a": pm["a"], "b": pm["b"], "same": pm["same"]},
                                  proj_seeds=(0, 1, 2), progress=False)
    paths = analyze.plot_weights(res, tmp_path)
    assert [p.name for p in paths] == ["weights_sparsity.png", "weights_layers.png", "weights_overlap.png",
                                       "weights_cosine.png"]
    for p in paths:
        assert p.stat().st_size > 10_000 and json.loads(p.with_suffix(".json").read_text())
    overlap = json.loads((tmp_path / "weights_overlap.json").read_text())
    assert overlap["jaccard"][0][1] == res["pairs"][0]["rel"]["all"]["jaccard"]
    assert overlap["a_in_b"][1][0] == res["pairs"][0]["rel"]["all"]["b_in_a"]   # row b, column a: |A&B|/|B|
    assert "| a | " in analyze.weights_markdown(res)


# ------------------------------------------------------------------------------------------------ consistency

def recs(model: str, accs: list[float], domains=("math", "math", "code", "code")) -> list[dict]:
    """Per-problem records whose mean rewards are `accs` (4 samples each)."""
    out = []
    for i, (acc, d) in enumerate(zip(accs, domains)):
        c = round(acc * 4)
        out.append({"model": model, "benchmark": "b", "id": str(i), "domain": d,
                    "rewards": [1.0] * c + [0.0] * (4 - c)})
    return out


def test_consistency_known_answers():
    records = (recs("base", [0, 0.25, 0, 0.5]) + recs("e_math", [1, 0.25, 0, 0]) +
               recs("e_code", [0, 0.75, 0, 0.5]) +
               recs("union", [1, 0.75, 0, 0.5]) +        # exactly the union of the experts' gains
               recs("ortho", [0, 0, 1, 0.25]) +          # gains only where no expert gains
               recs("partial", [1, 0.25, 0, 0]))         # only the math expert's gain
    res = analyze.consistency(records, "base", ["e_math", "e_code"], ["union", "ortho", "partial"],
                              n_boot=200, seed=0)
    # gains: e_math [1, 0, 0, 0], e_code [0, .5, 0, 0] -> union [1, .5, 0, 0]
    assert res["cos"]["union"]["all"]["cos"] == pytest.approx(1.0)
    union = res["cos"]["union"]["all"]
    assert union["lo"] == pytest.approx(1.0) and union["hi"] == pytest.approx(1.0)
    assert res["cos"]["ortho"]["all"]["cos"] == 0.0
    assert res["cos"]["partial"]["all"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    lo, hi = res["cos"]["partial"]["all"]["lo"], res["cos"]["partial"]["all"]["hi"]
    assert lo <= 1 / math.sqrt(1.25) <= hi
    # per domain: math problems 0,1 (union gains [1, .5]); code problems 2,3 (union gains all 0: undefined)
    assert res["n_problems"] == {"all": 4, "code": 2, "math": 2}
    assert res["cos"]["partial"]["math"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    assert math.isnan(res["cos"]["union"]["code"]["cos"])
    again = analyze.consistency(records, "base", ["e_math", "e_code"], ["partial"], n_boot=200, seed=0)
    # seeded bootstrap: the same intervals again
    assert analyze.clean_json(again["cos"]) == {"partial": analyze.clean_json(res["cos"]["partial"])}
    assert again["cos"]["partial"]["all"]["lo"] == res["cos"]["partial"]["all"]["lo"]


def test_consistency_bootstrap_interval_matches_reference():
    rng = np.random.default_rng(5)
    a, b = rng.random(50), rng.random(50)
    lo, hi = analyze.bootstrap_cosine(a, b, n_boot=500, seed=3)
    idx = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    ref = [a[i] @ b[i] / (np.linalg.norm(a[i]) * np.linalg.norm(b[i])) for i in idx]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(ref, [2.5, 97.5])))


def test_consistency_errors_and_files(tmp_path):
    records = recs("base", [0, 0, 0, 0]) + recs("e", [1, 0, 0, 0]) + recs("m", [1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"no per-problem results for models \['missing'\]"):
        analyze.consistency(records, "base", ["e"], ["missing"])
    path = tmp_path / "pp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    res = analyze.run_consistency(analyze.ConsistencyConfig(experts=["e"], models=["m"], results=str(path),
                                                            out=str(tmp_path), n_boot=50))
    assert res["cos"]["m"]["all"]["cos"] == pytest.approx(1 / math.sqrt(2))
    assert (tmp_path / "consistency.json").exists() and (tmp_path / "consistency_bars.json").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(records[0]) + "\n" + json.dumps({"model": "x", "id": "1"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: line 2: missing field 'benchmark'"):
        analyze.read_per_problem(bad)


# ------------------------------------------------------------------------------------------------ kl

import model  # noqa: E402  (the project's model.py: tiny Qwen3 + tokenizer)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    """Three tiny models with different random inits, saved as HF folders (seed 0 is the base)."""
    tmp = tmp_path_factory.mktemp("tiny")
    tok = model.load_tokenizer("tiny")
    dirs = {}
    for name, seed in (("s0", 0), ("s1", 1), ("s2", 2)):
        model.save_pretrained(model.load_model("tiny", seed=seed), tok, str(tmp / name))
        dirs[name] = str(tmp / name)
    return dirs


def sample_trajs(policy, n=3):
    tok = model.load_tokenizer("tiny")
    prompts = [[{"role": "user", "content": f"What is {i} + {i}?" + " Think." * i}] for i in range(n)]
    out = model.generate(policy, tok, prompts, n=2, max_new_tokens=12, temperature=1.0, seed=0)
    return [(s["prompt_ids"], s["completion_ids"]) for s in out], tok.pad_token_id


def reference_kl(p_model, q_model, trajs):
    """One unpadded sequence at a time, softmax and KL in float64 numpy."""
    tot_pq = tot_qp = n = 0
    for p, c in trajs:
        ids = torch.tensor([list(p) + list(c)])
        with torch.no_grad():
            lp = p_model(input_ids=ids).logits[0].double().numpy()
            lq = q_model(input_ids=ids).logits[0].double().numpy()
        for t in range(len(p) - 1, len(p) + len(c) - 1):
            P = np.exp(lp[t] - lp[t].max()); P /= P.sum()
            Q = np.exp(lq[t] - lq[t].max()); Q /= Q.sum()
            tot_pq += (P * (np.log(P) - np.log(Q))).sum()
            tot_qp += (Q * (np.log(Q) - np.log(P))).sum()
            n += 1
    return tot_pq / n, tot_qp / n, n


def test_kl_identical_models_is_zero():
    p, q = model.load_model("tiny", seed=0), model.load_model("tiny", seed=0)
    trajs, pad = sample_trajs(p)
    kl = analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4)
    assert kl["kl_pq"] == pytest.approx(0, abs=1e-7) and kl["kl_qp"] == pytest.approx(0, abs=1e-7)
    assert kl["n_tokens"] == sum(len(c) for _, c in trajs)


def test_kl_matches_unbatched_reference():
    p, q = model.load_model("tiny", seed=0), model.load_model("tiny", seed=1)
    trajs, pad = sample_trajs(p)
    assert len({len(a) + len(b) for a, b in trajs}) > 1   # padding is exercised
    kl = analyze.teacher_forced_kl(p, q, trajs, pad_id=pad, batch_size=4, time_chunk=5)
    ref_pq, ref_qp, n = reference_kl(p, q, trajs)
    assert kl["n_tokens"] == n
    assert kl["kl_pq"] == pytest.approx(ref_pq, rel=1e-4) and kl["kl_qp"] == pytest.approx(ref_qp, rel=1e-4)
    assert kl["kl_pq"] > 0 and kl["kl_pq"] != pytest.approx(kl["kl_qp"])   # KL is not symmetric


def test_pack_masks_exactly_the_completion_predictions():
    ids, attn, mask = analyze.pack([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position t predicts token t+1: row 0 predicts 8, 9 from positions 2, 3; row 1 predicts 8, 9, 10 from 0, 1, 2
    assert mask.tolist() == [[False, False, True, True, False], [True, True, True, False, False]]


def test_kl_matrix_end_to_end(tiny_dirs, tmp_path):
    d = tiny_dirs
    evaluation = {"models": {"m": d["s0"], "c": d["s1"], "merged": d["s2"]},
                  "by_domain": {"m": {"math": 0.5, "code": 0.1}, "c": {"math": 0.2, "code": 0.4},
                                "merged": {"math": 0.45, "code": 0.3}}}
    analyze.write_json(tmp_path / "eval.json", evaluation)
    cfg = analyze.KLConfig(experts=[f"math={d['s0']}", f"code={d['s1']}"], multitask=d["s0"],
                           merged=[f"merged={d['s2']}"], n_problems=3, k=2, max_new_tokens=8, out=str(tmp_path),
                           device="cpu")
    res = analyze.run_kl(cfg)
    assert res["domains"] == ["math", "code"] and res["models"] == ["math", "code", "multitask", "merged"]
    fwd, rev = np.array(res["kl_fwd"]), np.array(res["kl_rev"])
    assert fwd[0, 0] == pytest.approx(0, abs=1e-7) and fwd[1, 1] == pytest.approx(0, abs=1e-7)
    assert fwd[0, 2] == pytest.approx(0, abs=1e-7)   # the "multitask" model is the math expert itself
    assert (fwd[0, [1, 3]] > 0).all() and (fwd[1, [0, 2, 3]] > 0).all() and (rev[0, [1, 3]] > 0).all()
    # accuracy change on the row's domain against the row's expert, matched to eval.json by path
    assert np.allclose(res["perf_change"], [[0, 0.2 - 0.5, 0, 0.45 - 0.5], [0.1 - 0.4, 0, 0.1 - 0.4, 0.3 - 0.4]])
    plotted = json.loads((tmp_path / "kl_heatmap.json").read_text())
    assert plotted["kl_fwd"] == analyze.clean_json(res["kl_fwd"])
    assert (tmp_path / "kl_heatmap.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------ eval

import data  # noqa: E402


def test_embedded_benchmarks_take_the_training_difficulty():
    """The tiny model trains on difficulty-0 math; eval must score it on the same kind of problem."""
    for level in (0, 2):
        benches = analyze.load_benchmarks(["embedded"], ["math", "code"], 3, 0, difficulty=level)
        assert benches["embedded/math"] == data.embedded("math", "eval", n=3, seed=0, difficulty=level)
        assert benches["embedded/code"] == data.embedded("code", "eval", n=3, seed=0)


def test_eval_constructed_completions(tmp_path, monkeypatch):
    """generate replaced by a fake whose first sample of each problem is the right answer and the other
    three are wrong: the real math verifier must give avg@4 = 1/4, pass@1 = 1/4, pass@4 = 1."""
    rows = data.embedded("math", "eval", n=3, seed=0)
    answer_of = {json.dumps(r["prompt"]): r["answer"] for r in rows}

    def fake_generate(policy, tokenizer, prompts, *, n=1, **kw):
        out = []
        for p in prompts:
            for j in range(n):
                text = f"The answer is \\boxed{{{answer_of[json.dumps(p)]}}}." if j == 0 else "I do not know."
                out.append({"prompt_ids": [1], "completion_ids": [5, 2], "text": text, "truncated": False})
        return out

    monkeypatch.setattr(analyze.model, "generate", fake_generate)
    cfg = analyze.EvalConfig(models=["m=tiny"], domains=["math"], difficulty=1, n_problems=3, k=4, out=str(tmp_path),
                             device="cpu", workers=1)
    res = analyze.run_eval(cfg)
    cell = res["table"]["m"]["embedded/math"]
    assert (cell["avg@k"], cell["pass@1"], cell["pass@k"], cell["n"], cell["k"]) == (0.25, 0.25, 1.0, 3, 4)
    lines = [json.loads(x) for x in (tmp_path / "eval_per_problem.jsonl").read_text().splitlines()]
    assert [x["rewards"] for x in lines] == [[1.0, 0.0, 0.0, 0.0]] * 3
    assert [x["id"] for x in lines] == [r["id"] for r in rows] and lines[0]["model"] == "m"
    assert "| m | 0.250 | 0.250 |" in (tmp_path / "eval.md").read_text()
    csv_lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert csv_lines == ["model,embedded/math avg@4,embedded/math pass@4,mean avg@4", "m,0.2500,1.0000,0.2500"]


def test_eval_tiny_model_end_to_end(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in data.embedded("science", "eval", n=2, seed=1)))
    cfg = analyze.EvalConfig(models=["base=tiny"], benchmarks=["embedded", f"sci={bench}"], n_problems=2, k=2,
                             max_new_tokens=8, out=str(tmp_path), device="cpu", workers=2)
    res = analyze.run_eval(cfg)
    assert sorted(res["table"]["base"]) == ["embedded/code", "embedded/if", "embedded/math", "embedded/science",
                                            "sci"]
    lines = [json.loads(x) for x in (tmp_path / "eval_per_problem.jsonl").read_text().splitlines()]
    assert len(lines) == 5 * 2
    for x in lines:
        assert len(x["rewards"]) == 2 and all(0 <= r <= 1 for r in x["rewards"])
        assert all(1 <= n <= 8 for n in x["lengths"]) and 0 <= x["truncated"] <= 2
    for name in ("eval.json", "eval.md", "eval.csv", "eval_bars.png", "eval_bars.json"):
        assert (tmp_path / name).exists()
    with pytest.raises(FileNotFoundError, match="benchmark 'x': no file"):
        analyze.load_benchmarks(["x=nowhere.jsonl"], ["math"], None, 0)


# ------------------------------------------------------------------------------------------------ report

def perturbed(seed: int, frac: float = 0.1):
    """The tiny base (seed 0) with 10% of its entries moved: a stand-in for an RL-trained checkpoint."""
    net = model.load_model("tiny", seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_((torch.rand(p.shape, generator=g) < frac) * 0.05 * torch.randn(p.shape, generator=g))
    return net


def write_run(root: Path, name: str, domains: list[str], wall_s: float, net) -> str:
    d = root / name
    model.save_pretrained(net, model.load_tokenizer("tiny"), str(d))
    (d / "run.json").write_text(json.dumps({"config": {"domains": domains, "model": "tiny"}, "wall_s": wall_s,
                                            "world_size": 1, "device": "cpu", "device_hours": wall_s / 3600}))
    lines = []
    for step in range(6):
        row = {"step": step, "time": 10.0 * step, "reward": 0.1 * step, "kl": 0.01 * step, "entropy": 2 - 0.1 * step,
               "grad_norm": 1.0, "truncated": 0.5, "zero_var_frac": 0.3, "tokens_per_s": 100.0}
        for i, dom in enumerate(domains):
            row |= {f"reward/{dom}": 0.1 * step + 0.05 * i, f"acc/{dom}": 0.08 * step, f"len/{dom}": 50 + step}
        lines.append(json.dumps(row) + "\n")
    (d / "metrics.jsonl").write_text("".join(lines))
    return str(d)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    experts = {"math": perturbed(1), "code": perturbed(2)}
    paths = {dom: write_run(root, dom, [dom], 100.0, net) for dom, net in experts.items()}
    paths["multitask"] = write_run(root, "math-code", ["math", "code"], 150.0, perturbed(3))
    merged = model.load_model("tiny", seed=0)
    sds = [net.state_dict() for net in experts.values()]
    merged.load_state_dict({k: (sds[0][k] + sds[1][k]) / 2 for k in sds[0]})
    model.save_pretrained(merged, model.load_tokenizer("tiny"), str(root / "ties"))
    (root / "ties" / "merge_report.json").write_text(json.dumps({"method": "ties", "wall_s": 36.0}))
    paths["ties"] = str(root / "ties")
    return root, paths


def test_report_writes_every_section(runs_dir, tmp_path, monkeypatch):
    root, paths = runs_dir
    out = tmp_path / "analysis"
    # the report computes every analysis itself from the runs; eval and kl get smaller defaults to stay fast
    monkeypatch.setattr(analyze, "EvalConfig", functools.partial(
        analyze.EvalConfig, domains=["math", "code"], n_problems=3, k=2, max_new_tokens=8, workers=2))
    monkeypatch.setattr(analyze, "KLConfig", functools.partial(analyze.KLConfig, n_problems=3, max_new_tokens=8))
    text = analyze.run_report(analyze.ReportConfig(runs=str(root), out=str(out), device="cpu"))
    assert "Not available" not in text
    for section in ("## 1. Runs", "## 2. Training curves", "## 3. Main table", "## 4. Combining the experts",
                    "## 5. Cost", "## 6. Weight updates", "## 7. Cross-domain KL", "## 8. Consistency of gains"):
        assert section in text
    for png in ("train_curves", "train_stats", "eval_bars", "weights_sparsity", "weights_layers",
                "weights_overlap", "weights_cosine", "kl_heatmap", "consistency_bars"):
        assert f"]({png}.png)" in text
        assert (out / f"{png}.png").stat().st_size > 10_000 and (out / f"{png}.json").exists()
    # models found from the runs: experts by their single domain, the two-domain run, the merge folder;
    # the weight analysis takes the trained models only
    weights = json.loads((out / "weights.json").read_text())
    assert weights["models"] == {"math": paths["math"], "code": paths["code"], "multitask": paths["multitask"]}
    evaluation = json.loads((out / "eval.json").read_text())
    assert list(evaluation["models"]) == ["base", "math", "code", "multitask", "ties"]
    assert 0.85 < weights["sparsity"]["math"]["exact"]["all"] < 0.95   # 10% of entries were moved
    kl = json.loads((out / "kl.json").read_text())
    assert kl["domains"] == ["math", "code"] and kl["perf_change"] is not None
    cons = json.loads((out / "consistency.json").read_text())
    assert cons["base"] == "base" and cons["experts"] == ["math", "code"] and cons["models"] == ["multitask", "ties"]
    # cost: experts 100 s + 100 s + merge 36 s against the mixed run's 150 s
    cost = json.loads((out / "cost.json").read_text())
    assert cost["approaches"]["experts + merge ties"] == pytest.approx(236 / 3600)
    assert "| experts + merge ties | 0.0656 | 0.636 |" in text   # 236 s in hours; 150 / 236


def test_report_says_what_is_missing(tmp_path):
    text = analyze.run_report(analyze.ReportConfig(runs=str(tmp_path / "none"), out=str(tmp_path / "a"),
                                                   device="cpu"))
    assert text.count("**Not available:**") == 8
    assert (tmp_path / "a" / "report.md").read_text() == text


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, str(ROOT / "analyze.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for sub in ("eval", "weights", "kl", "consistency", "report"):
        assert sub in out.stdout


def test_cli_lists_take_commas_and_spaces():
    import tyro
    cfg = tyro.cli(analyze.EvalConfig, args=["--models", "a=x,b=y", "c=z", "--domains", "math,code"])
    assert cfg.models == ["a=x", "b=y", "c=z"] and cfg.domains == ["math", "code"]
    assert analyze.parse_named(cfg.models + ["out/runs/mixed/"]) == {"a": "x", "b": "y", "c": "z",
                                                                     "mixed": "out/runs/mixed/"}
    with pytest.raises(ValueError, match="given twice"):
        analyze.parse_named(["a=x", "a=y"])
    with pytest.raises(AssertionError, match="unknown domains"):
        analyze.EvalConfig(domains=["chess"])


def fake_run(root: Path, name: str, config: dict, wall_s: float, model_files: bool = True) -> str:
    d = root / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"config": config, "wall_s": wall_s, "world_size": 1, "device": "cpu",
                                            "device_hours": wall_s / 3600}))
    if model_files:   # what find_checkpoint looks for; no weights are read here
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    return str(d)


def test_discover_kinds_cost_and_merge_comparison(tmp_path):
    p = {"math": fake_run(tmp_path, "math", {"domains": ["math"]}, 100.0),
         "code": fake_run(tmp_path, "code", {"domains": ["code"]}, 100.0),
         "mixed": fake_run(tmp_path, "mixed", {"domains": ["math", "code"]}, 150.0),
         "opd": fake_run(tmp_path, "opd", {"domains": ["math", "code"], "teachers": "math=a,code=b"}, 120.0)}
    # a merge folder that also holds a run.json, as merge.py copies one from a base run folder
    p["ties"] = fake_run(tmp_path, "ties", {"domains": ["math", "code"]}, 999.0)
    (tmp_path / "ties" / "merge_report.json").write_text(json.dumps(
        {"method": "ties", "wall_s": 36.0, "summary": {"kept": [0.2, 0.4], "sign_conflict": 0.1, "update_norm": 2.5}}))
    found = analyze.discover(tmp_path)
    assert {n: t["kind"] for n, t in found["train"].items()} == {"math": "expert", "code": "expert",
                                                                 "mixed": "mixed", "opd": "opd"}
    assert list(found["merged"]) == ["ties"]
    models = analyze.models_from_runs(found, analyze.ReportConfig(runs=str(tmp_path)))
    assert models["distilled"] == {"opd": p["opd"]} and models["multitask"] == {"multitask": p["mixed"]}

    md, cost = analyze.cost_table(found)
    assert cost["experts_total"] == pytest.approx(200 / 3600)
    assert cost["approaches"]["experts + merge ties"] == pytest.approx(236 / 3600)
    assert cost["approaches"]["experts + MT-OPD run opd"] == pytest.approx(320 / 3600)
    assert "| mixed run mixed | 0.0417 | 1 |" in md and "| experts + MT-OPD run opd | 0.0889 | 0.469 |" in md

    evaluation = {"models": {"base": "tiny", "math": p["math"], "code": p["code"], "mixed": p["mixed"],
                             "ties": p["ties"], "opd": p["opd"]},
                  "by_domain": {"math": {"math": 0.5, "code": 0.0}, "code": {"math": 0.1, "code": 0.2},
                                "mixed": {"math": 0.2, "code": 0.1}, "ties": {"math": 0.3, "code": 0.1},
                                "opd": {"math": 0.1, "code": 0.1}}}
    rows = {line.split("|")[2].strip(): line for line in
            analyze.merge_comparison(found, models, evaluation).splitlines() if line.startswith("| ")}
    assert rows["each on its own domain"] == "| experts | each on its own domain | 0.500 | 0.200 | 0.350 | n/a |  |  |  |"
    assert rows["mixed"] == "| mixed | mixed | 0.200 | 0.100 | 0.150 | n/a |  |  |  |"   # named as in eval.json
    assert rows["ties"] == "| merge | ties | 0.300 | 0.100 | 0.200 | 0.050 | 0.3 | 0.1 | 2.5 |"
    assert rows["opd"] == "| MT-OPD | opd | 0.100 | 0.100 | 0.100 | -0.050 |  |  |  |"


def test_report_samples_like_the_runs(tmp_path, monkeypatch):
    """With --compute, eval and kl use the runs' math difficulty and completion budget, and weights takes
    the trained models only (not the merges)."""
    cfg = {"difficulty": 2, "max_new_tokens": 7}
    fake_run(tmp_path, "math", {"domains": ["math"], **cfg}, 10.0)
    fake_run(tmp_path, "code", {"domains": ["code"], **cfg}, 10.0)
    fake_run(tmp_path, "mixed", {"domains": ["math", "code"], **cfg}, 10.0)
    fake_run(tmp_path, "ties", {}, 1.0)
    (tmp_path / "ties" / "merge_report.json").write_text(json.dumps({"method": "ties"}))
    seen = {}
    for fn in ("run_eval", "run_weights", "run_kl", "run_consistency"):
        monkeypatch.setattr(analyze, fn, lambda c, fn=fn: seen.setdefault(fn, c))
    analyze.run_report(analyze.ReportConfig(runs=str(tmp_path), out=str(tmp_path / "a"), base="b", device="cpu"))
    assert (seen["run_eval"].difficulty, seen["run_eval"].max_new_tokens) == (2, 7)
    assert (seen["run_kl"].difficulty, seen["run_kl"].max_new_tokens) == (2, 7)
    assert [m.split("=")[0] for m in seen["run_weights"].models] == ["math", "code", "multitask"]
    assert [m.split("=")[0] for m in seen["run_eval"].models] == ["base", "math", "code", "multitask", "ties"]


def test_eval_loads_ifbench_from_a_local_file_and_scores_it_with_the_paper_grader():
    """IFBench's file shape (key, prompt, instruction_id_list, kwargs with nulls) becomes if rows, which
    AllenAI's checkers score: tests/fixtures/ifbench.jsonl, verdicts worked out by hand."""
    path = Path(__file__).parent / "fixtures" / "ifbench.jsonl"
    rows = analyze.load_benchmarks([f"ifbench={path}"], ["if"], None, 0)["ifbench"]
    assert [r["id"] for r in rows] == ["b1", "b2"] and rows[0]["kwargs"] == [{}, {"N": 2}]
    completions = ["<think>two pets</think>cats:3,dogs:4", "<think>a colour</think>light blue"]
    results = analyze.verifiers.verify_batch(completions, rows, grader="paper")
    assert [(r["reward"], r["passed"], r["error"]) for r in results] == [(1.0, 2, None), (0.0, 0, None)]
