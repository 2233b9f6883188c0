"""An encoder record (encoder_records.py) checked against a model's module tree: the encoder, its layers and each
layer's parts (eet_hf.encoder.LayerParts), or the first thing that does not match, as a sentence for explain().

What is checked: the layers and their attention are the family's own HF classes (so their forwards are the post-LN
arithmetic the record describes, not a user's variant); q, k, v, the two output denses and the FFN input are
nn.Linear with biases, of shapes that chain ([all_heads, hidden] x 3, [hidden, all_heads], [intermediate, hidden],
[hidden, intermediate]); both norms are torch LayerNorms over hidden; the embeddings module exists, and ELECTRA's
projection where its embedding size differs from the hidden size.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

from eet_hf.encoder import LayerParts

from ._rewire import layer_norm_unfusable
from .encoder_records import EncoderRecord
from .generic_modules import gelu_kind


@dataclass(frozen=True)
class EncoderMatch:
    encoder: nn.Module  # the module whose forward runs the layers (BertEncoder, DistilBERT's Transformer)
    layers: nn.ModuleList
    parts: tuple[LayerParts, ...]


def family_class(record: EncoderRecord, name: str) -> type | None:
    """The class `name` of the family's transformers module (None where this transformers version lacks it)."""
    return getattr(importlib.import_module(record.modeling), name, None)


def submodule(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:  # missing, or not a module (a pooler set to None)
        return None


def match(model: nn.Module, record: EncoderRecord, fuse_gelu: bool) -> EncoderMatch | str:
    """The model's encoder as the record describes it, or why it is not. fuse_gelu: the packed step fuses GELU
    activations into the FFN input's GEMM (accelerate(mlp=True))."""
    base = model.base_model
    encoder = submodule(base, record.encoder)
    if encoder is None:
        return f"no encoder module at {record.encoder!r}"
    layers = submodule(encoder, record.layers)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return f"no layers (nn.ModuleList) at {record.encoder}.{record.layers}"
    if submodule(base, record.embeddings) is None:
        return f"no embeddings module at {record.embeddings!r}"
    config = model.config
    if record.embeddings_project and getattr(config, "embedding_size", config.hidden_size) != config.hidden_size:
        project = submodule(base, record.embeddings_project)
        if type(project) is not nn.Linear:
            return f"embedding size {config.embedding_size} != hidden size without a Linear {record.embeddings_project}"
    parts = layer_parts(layers, record, fuse_gelu)
    return parts if isinstance(parts, str) else EncoderMatch(encoder, layers, parts)


def layer_parts(layers: nn.ModuleList, record: EncoderRecord, fuse_gelu: bool) -> tuple[LayerParts, ...] | str:
    """Each layer's parts, or why one layer does not match the record."""
    found = []
    for i, layer in enumerate(layers):
        parts = _layer(layer, record, fuse_gelu)
        if isinstance(parts, str):
            return f"layer {i}: {parts}"
        found.append(parts)
    return tuple(found)


def _layer(layer: nn.Module, record: EncoderRecord, fuse_gelu: bool) -> LayerParts | str:
    if type(layer) is not family_class(record, record.layer_class):
        return f"{type(layer).__name__} is not HF's {record.layer_class}"
    attention = submodule(layer, record.attention)
    if type(attention) is not family_class(record, record.attention_class):
        return f"{record.attention} is {type(attention).__name__}, not HF's {record.attention_class}"
    qkv = tuple(submodule(attention, name) for name in (record.q, record.k, record.v))
    linears = {"q/k/v": qkv, "attention output": (submodule(layer, record.attn_out),),
               "FFN": (submodule(layer, record.ffn_in), submodule(layer, record.ffn_out))}
    for what, modules in linears.items():
        if any(type(m) is not nn.Linear or m.bias is None for m in modules):
            return f"{what}: not nn.Linear with a bias ({', '.join(type(m).__name__ for m in modules)})"
    norms = (submodule(layer, record.attn_norm), submodule(layer, record.ffn_norm))
    for norm in norms:
        reason = "missing" if norm is None else layer_norm_unfusable(norm)
        if reason:
            return f"norm: {reason}"
    activation = submodule(layer, record.activation)
    if activation is None:
        return f"no activation module at {record.activation!r}"
    blocks = _blocks_reason(layer, record)
    if blocks:
        return blocks
    attn_out, ffn_in, ffn_out = linears["attention output"][0], *linears["FFN"]
    head_size = getattr(attention, "attention_head_size", 0)
    shapes = _shapes_reason(qkv, attn_out, ffn_in, ffn_out, norms, head_size)
    if shapes:
        return shapes
    return LayerParts(qkv, qkv[0].out_features // head_size, head_size, float(attention.scaling), attn_out, norms[0],
                      ffn_in, activation, fused_gelu(activation) if fuse_gelu else None, ffn_out, norms[1])


def fused_gelu(activation: nn.Module) -> str | None:
    """eet linear_gelu's `approximate` for an activation module whose formula it reproduces (HF's gelu, gelu_new,
    gelu_pytorch_tanh, torch's GELU), else None. FastGELU, the tanh form written differently, is left to its module
    (the generic adapter checks it against eet's op on its first call)."""
    return None if type(activation).__name__ == "FastGELUActivation" else gelu_kind(activation)


def block_children(block: str, *paths: str) -> list[str | None]:
    """The child names under `block` of each of `paths` (layer-relative), None for a path outside it."""
    return [p[len(block) + 1:] if p.startswith(block + ".") and "." not in p[len(block) + 1:] else None
            for p in paths]


def _blocks_reason(layer: nn.Module, record: EncoderRecord) -> str | None:
    """The modules whose forwards eet fuses for HF's own layer loop hold the parts the record says, as children of
    the family's own classes."""
    blocks = {record.mlp_block: (record.ffn_in, record.activation)}
    if record.residual_blocks:
        blocks.update({record.attn_out.rsplit(".", 1)[0]: (record.attn_out, record.attn_norm),
                       record.ffn_out.rsplit(".", 1)[0]: (record.ffn_out, record.ffn_norm)})
    for path, children in blocks.items():
        block = submodule(layer, path)
        if block is None or type(block).__module__ != record.modeling:
            return f"{path} is {type(block).__name__}, not a {record.modeling} module"
        if None in block_children(path, *children):
            return f"{path} does not hold {' and '.join(children)} as its children"
    return None


def _shapes_reason(qkv, attn_out, ffn_in, ffn_out, norms, head_size: int) -> str | None:
    hidden, heads_width, inner = qkv[0].in_features, qkv[0].out_features, ffn_in.out_features
    expected = [(m, (heads_width, hidden)) for m in qkv] + [(attn_out, (hidden, heads_width)),
                                                             (ffn_in, (inner, hidden)), (ffn_out, (hidden, inner))]
    for module, shape in expected:
        if tuple(module.weight.shape) != shape:
            return f"a Linear of shape {tuple(module.weight.shape)} where the layer needs {shape}"
    if any(tuple(n.normalized_shape) != (hidden,) for n in norms):
        return f"a LayerNorm not over the hidden size {hidden}"
    if head_size <= 0 or heads_width % head_size:
        return f"attention head size {head_size} does not divide {heads_width}"
    return None
