"""The rules of the registered architectures, kept as data: a config.json naming one converts without torch.

The analyzer builds the model with torch and transformers (seconds of imports, hundreds of MiB) to learn
what is the same for every config of an architecture: which layer each tensor name belongs to, its rule and
MLX name, which tensors are dropped and which are tied. ``known_rules.json`` holds that answer per
architecture, generated from the analyzer (``known_gen.py``) and checked against it
(tests/test_known_rules.py), with layer indices as ``*``: for the model's own names, and for the names
transformers saves it under when they differ (per-expert MoE weights, a multimodal model's older
prefixes). A checkpoint is converted from it only when every tensor name is a pattern of one of these
layouts, with as many dimensions as the model's tensor; anything else (another checkpoint layout, an
option that adds tensors the data has never seen, a wrapper prefix) is left to the analyzer.
"""

from __future__ import annotations

import functools
import json
import os

from ..core.fp8 import pair_scales
from ..core.spec import RuleSpec
from .matching import Match, rename_notes

# model_type -> architectures[0]: the architectures whose rules are kept as data (each analyzes at 100%
# coverage from its config alone, tests/test_analyze_hf.py).
ARCHS = {
    "bert": "BertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "distilbert": "DistilBertForMaskedLM",
    "albert": "AlbertForMaskedLM",
    "deberta": "DebertaForMaskedLM",
    "deberta-v2": "DebertaV2ForMaskedLM",
    "electra": "ElectraForPreTraining",
    "mpnet": "MPNetForMaskedLM",
    "longformer": "LongformerForMaskedLM",
    "funnel": "FunnelModel",
    "camembert": "CamembertForMaskedLM",
    "data2vec-text": "Data2VecTextForMaskedLM",
    "gpt2": "GPT2LMHeadModel",
    "gpt_neo": "GPTNeoForCausalLM",
    "opt": "OPTForCausalLM",
    "bloom": "BloomForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "codegen": "CodeGenForCausalLM",
    "falcon": "FalconForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration",
    "pegasus": "PegasusForConditionalGeneration",
    "vit": "ViTForImageClassification",
    "clip": "CLIPModel",
    "swin": "SwinForImageClassification",
    "convnext": "ConvNextForImageClassification",
    "dinov2": "Dinov2Model",
    "beit": "BeitForImageClassification",
    "segformer": "SegformerForSemanticSegmentation",
    "mobilenet_v2": "MobileNetV2ForImageClassification",
    "resnet": "ResNetForImageClassification",
    "whisper": "WhisperForConditionalGeneration",
    "wav2vec2": "Wav2Vec2ForCTC",
    "hubert": "HubertForCTC",
    "xlnet": "XLNetLMHeadModel",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "mixtral": "MixtralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}

HOW = "config.json, rules kept as data from the analyzer"
_PIECE = "part of a model tensor whose other sources are missing"


def pattern(name: str, fixed=()) -> str:
    """``name`` with its layer indices (parts that are all digits) as ``*``, but for the children of
    ``fixed`` prefixes (whose numbered children are different layers, a Sequential's)."""
    if not fixed:
        return ".".join(["*" if p.isdigit() else p for p in name.split(".")])
    out: list[str] = []
    for p in name.split("."):
        out.append("*" if p.isdigit() and ".".join(out) not in fixed else p)
    return ".".join(out)


def _fill(pat: str, nums: list[str]) -> str:
    if not nums:
        return pat
    it = iter(nums)
    return ".".join([next(it) if p == "*" else p for p in pat.split(".")])


_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "known_rules.json")


@functools.cache
def _data() -> dict:
    with open(_DATA, encoding="utf-8") as f:
        return json.load(f)["architectures"]


def _tie(config: dict, default):
    """The config's tie_word_embeddings as the data keys it; None when the data cannot tell (sub-configs that
    say otherwise, or a config class without the setting whose model may still read it)."""
    tie = config.get("tie_word_embeddings", default)
    nested = [v["tie_word_embeddings"] for v in config.values() if isinstance(v, dict) and "tie_word_embeddings" in v]
    if not isinstance(tie, (bool, type(None))) or any(v != tie for v in nested) or (default is None) != (tie is None):
        return None
    return json.dumps(tie)


def _rank_template(pat: str, order: dict) -> list:
    """Where the analyzer's depth-first walk meets a name of pattern ``pat`` (its specs come in that order):
    indices by value (None: the name's own), other parts by their place among their siblings (``order``,
    from the generator)."""
    parts = pat.split(".")
    return [
        None if p == "*" else int(p) if p.isdigit() else order.get(".".join(parts[: i + 1]), len(order))
        for i, p in enumerate(parts)
    ]


def _rank(template: list, nums: list[str]) -> tuple:
    it = iter(nums)
    return tuple(int(next(it)) if r is None else r for r in template)


def match_known(ck) -> tuple[str, Match, dict[str, str]] | None:
    """What the analyzer's match of ``ck`` to the model its config.json names would be: (the model's class
    name, the match, MLX module path -> torch class name), or None when the data cannot say."""
    config = ck.config
    if not isinstance(config, dict) or ck.layout != "torch":
        return None
    archs = config.get("architectures")
    arch = archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    data = _data().get(arch) if arch is not None else None
    if data is None or config.get("model_type") != data["model_type"]:
        return None
    tied = data["tied"].get(_tie(config, data["tie_default"]))
    if tied is None:
        return None
    fixed = set(data["fixed"])
    model_rows = [row + [row[0][0], "exact"] for row in data["tensors"].values()]
    for rows in (model_rows, list(data["saved"].values())):
        got = _match(ck, rows, data["order"], fixed, tied) if rows else None
        if got is not None:
            return (arch,) + got
    return None


def _match(ck, rows: list, order: dict, fixed: set, tied: dict) -> tuple[Match, dict[str, str]] | None:
    """The analyzer's match of ``ck`` when every name is a source of ``rows`` (one layout's), else None."""
    by_source: dict[str, list] = {}
    for row in rows:
        for i, src in enumerate(row[0]):
            by_source.setdefault(src, []).append((row, i))
    names = {e.name for e in ck.entries}
    scales = pair_scales((e.name, e.shape, e.dtype) for e in ck.entries).drop
    found, unmatched, types = [], [], {}
    templates: dict[str, list] = {}
    renamed = pieces = 0
    matched: set[str] = set()  # the model's names the checkpoint has
    for index, e in enumerate(ck.entries):
        if e.name in scales:  # float8 scales: not in the model, and folded into their weights by the plan
            unmatched.append((e.name, "not in the model"))
            continue
        pat = pattern(e.name, fixed)
        hits = by_source.get(pat)
        if not hits or any(len(e.shape) != row[6][i] for row, i in hits):
            return None
        nums = [p for p, w in zip(e.name.split("."), pat.split("."), strict=False) if w == "*"] if "*" in pat else []
        kind = hits[0][0][8]
        if kind == "piece":
            pieces += 1
        else:
            renamed += kind == "renamed"
            model_pat = hits[0][0][7]
            matched.add(e.name if hits[0][1] or model_pat == pat else _fill(model_pat, nums))
        covered = False
        for row, i in hits:
            sources = (e.name,) if len(row[0]) == 1 else tuple(_fill(s, nums) for s in row[0])
            if len(sources) == 1 or all(s in names for s in sources):
                covered = True
                if i == 0:
                    # the analyzer's order: the model's walk, then the pieces in checkpoint order
                    if row[7] is None:
                        rank: tuple = (1, (index,))
                    else:
                        if row[7] not in templates:
                            templates[row[7]] = _rank_template(row[7], order)
                        rank = (0, _rank(templates[row[7]], nums))
                    found.append((rank, len(found), sources, row, nums))
        if not covered:
            unmatched.append((e.name, _PIECE))
    found.sort(key=lambda f: f[:2])
    m = Match(tensors=len(ck.entries))
    for _, _, sources, ((row0, *_), mlx, rule, args, layer, why, *_), nums in found:
        if mlx is None:
            m.drop[sources[0]] = why
            continue
        out = sources[0] if mlx == row0 else _fill(mlx, nums)
        m.specs.append(RuleSpec(out, sources, rule, dict(args), "model"))
        if layer is not None and out.endswith(".weight"):
            types[out[: -len(".weight")]] = layer
    m.unmatched = unmatched
    absent = sorted(n for n in tied if n not in matched)
    if absent:
        m.notes.append(
            f"{len(absent)} model tensor(s) share storage with another and are not in the checkpoint "
            f"(tied weights, e.g. {absent[0]} = {tied[absent[0]]})"
        )
    m.notes += rename_notes(renamed, pieces)
    return m, types
