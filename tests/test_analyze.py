"""analyze.py on constructed models and results whose answers are known by hand."""

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
    assert res["cos"]["union"]["all"]["lo"] == pytest.approx(1.0) and res["cos"]["union"]["all"]["hi"] == pytest.approx(1.0)
    assert res["cos"]["ortho"]["all"]["cos"] == 0.0
    assert res["cos"]["partial"]["all"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    lo, hi = res["cos"]["partial"]["all"]["lo"], res["cos"]["partial"]["all"]["hi"]
    assert lo <= 1 / math.sqrt(1.25) <= hi
    # per domain: math problems 0,1 (union gains [1, .5]); code problems 2,3 (union gains all 0: undefined)
    assert res["n_problems"] == {"all": 4, "code": 2, "math": 2}
    assert res["cos"]["partial"]["math"]["cos"] == pytest.approx(1 / math.sqrt(1.25))
    assert math.isnan(res["cos"]["union"]["code"]["cos"])
    again = analyze.consistency(records, "base", ["e_math", "e_code"], ["partial"], n_boot=200, seed=0)
    assert analyze.clean_json(again["cos"]) == {"partial": analyze.clean_json(res["cos"]["partial"])}  # seeded bootstrap
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
