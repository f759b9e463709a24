"""Training and eval rows for the four domains, in one schema (data/README.md).

    import data
    rows = data.load("embedded", ["math", "code"], "train", seed=0)      # generated, offline
    rows = data.load("blend/train.jsonl", ["math", "code"], "train")     # a file: row schema or Nemotron blend
    rows = data.load("nvidia/Nemotron-3-Nano-RL-Training-Blend", ["math"], "train")   # a Hub id, via `datasets`
    batch = data.batch_for_step({"math": rows}, None, step=0, n=8, seed=0)   # one step's prompts (data/mix.py)
"""

from data.embedded import KINDS, RL_KINDS_SPEC, content_key, embedded, humaneval_rows, parse_kinds, sft_examples
from data.loaders import (CONVERTERS, DOMAINS, convert_aime, convert_gpqa, convert_hle, convert_ifeval,
                          convert_livecodebench, convert_mmlu_redux, convert_nemotron, date_window, detect_format,
                          load_file, read_jsonl, validate_row)
from data.mix import batch_for_step, mix_weights, split_counts


def load(spec: str, domains: list[str], split: str, *, seed: int = 0, kinds: str | None = None) -> list[dict]:
    """Rows of `domains`: spec "embedded" generates them (split applies; `kinds`, e.g. "shared=0.5,conflict=0.5",
    sets the shares of the item kinds, data/embedded.py); any other spec is a file, a dataset directory or a Hub
    id, read with `datasets` and used whole whatever the split (data/loaders.py)."""
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {', '.join(map(repr, unknown))}; valid domains: {', '.join(DOMAINS)}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; valid splits: train, eval")
    if spec == "embedded":
        shares = parse_kinds(kinds) if kinds else None
        return [row for d in domains for row in embedded(d, split, seed=seed, kinds=shares)]
    return load_file(spec, list(domains), seed=seed)
