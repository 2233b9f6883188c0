"""Encoder families eet's packed encoder serves, described as data (patches/encoder.py rewires them; eet_hf/encoder
runs them).

A record names where a family keeps each part of a post-LN encoder layer

    x1 = attn_norm(attn_out(attention(q(x), k(x), v(x))) + x)
    x  = ffn_norm(ffn_out(activation(ffn_in(x1))) + x1)

and the modules around the layers (embeddings, pooler, the heads whose whole forward eet may replay as one CUDA
graph). Paths are dotted attribute paths: `encoder` from the base model (`model.base_model`), the layer parts from one
layer. accelerate() checks the record against the model's module tree (patches/encoder_match.py: HF's own layer and
attention classes, nn.Linear / nn.LayerNorm parts of consistent shapes); a model that does not match keeps the generic
adapter's per-module swaps, and explain() says why.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EncoderRecord:
    modeling: str  # the transformers module that defines the family's classes
    layer_class: str  # HF's layer class there: its forward is the post-LN arithmetic above
    attention_class: str  # HF's self-attention class there (holds q, k, v)
    # The encoder module's output class (transformers.modeling_outputs): DistilBertModel returns its encoder's output.
    encoder_output: str = "BaseModelOutputWithPastAndCrossAttentions"
    encoder: str = "encoder"  # from the base model: the module whose forward runs the layers
    layers: str = "layer"  # from the encoder: the nn.ModuleList of layers
    # From a layer:
    attention: str = "attention.self"
    q: str = "query"  # from the attention module
    k: str = "key"
    v: str = "value"
    attn_out: str = "attention.output.dense"
    attn_norm: str = "attention.output.LayerNorm"
    ffn_in: str = "intermediate.dense"
    activation: str = "intermediate.intermediate_act_fn"
    ffn_out: str = "output.dense"
    ffn_norm: str = "output.LayerNorm"
    # Whether attn_out/attn_norm (and ffn_out/ffn_norm) are the two children of one module whose forward(h, residual)
    # is norm(dense(h) + residual) (BertSelfOutput, BertOutput): eet fuses those modules for HF's own layer loop too.
    residual_blocks: bool = True
    mlp_block: str = "intermediate"  # the module whose forward is activation(ffn_in(x)) [then ffn_out, if a child]
    embeddings: str = "embeddings"  # from the base model
    embeddings_project: str | None = None  # ELECTRA: Linear(embedding_size -> hidden_size) where the two differ
    pooler: str | None = "pooler"  # reads position 0: why left-padded batches keep HF's layer loop
    inputs: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")  # tensors a graphed call may pass
    heads: tuple[str, ...] = ()  # top-level classes whose forward eet replays as one CUDA graph
    vocab_heads: tuple[str, ...] = ()  # of those, the ones whose outputs grow with the vocabulary (tokens x vocab)


def _roberta_like(prefix: str, module: str) -> EncoderRecord:
    """RoBERTa's tree (XLM-RoBERTa and CamemBERT are RoBERTa's code under other names). Position ids come from
    input_ids (padding_idx offset) inside the embeddings, which stay HF's."""
    return EncoderRecord(
        modeling=f"transformers.models.{module}.modeling_{module}",
        layer_class=f"{prefix}Layer", attention_class=f"{prefix}SelfAttention",
        heads=tuple(f"{prefix}{h}" for h in ("Model", "ForMaskedLM", "ForSequenceClassification",
                                              "ForTokenClassification", "ForQuestionAnswering", "ForMultipleChoice",
                                              "ForCausalLM")),
        vocab_heads=(f"{prefix}ForMaskedLM", f"{prefix}ForCausalLM"),
    )


BERT = EncoderRecord(
    modeling="transformers.models.bert.modeling_bert", layer_class="BertLayer", attention_class="BertSelfAttention",
    heads=("BertModel", "BertForMaskedLM", "BertForSequenceClassification", "BertForTokenClassification",
           "BertForQuestionAnswering", "BertForMultipleChoice", "BertForNextSentencePrediction", "BertForPreTraining",
           "BertLMHeadModel"),
    vocab_heads=("BertForMaskedLM", "BertForPreTraining", "BertLMHeadModel"),
)
ELECTRA = EncoderRecord(
    modeling="transformers.models.electra.modeling_electra", layer_class="ElectraLayer",
    attention_class="ElectraSelfAttention", embeddings_project="embeddings_project", pooler=None,
    heads=("ElectraModel", "ElectraForSequenceClassification", "ElectraForTokenClassification",
           "ElectraForQuestionAnswering", "ElectraForMultipleChoice", "ElectraForPreTraining", "ElectraForMaskedLM",
           "ElectraForCausalLM"),
    vocab_heads=("ElectraForMaskedLM", "ElectraForCausalLM"),
)
# DistilBERT: out_lin sits inside the attention module, the two LayerNorms in the layer (HF's TransformerBlock adds the
# residual itself), the FFN module holds both linears. No token types, no pooler (its heads read position 0).
DISTILBERT = EncoderRecord(
    modeling="transformers.models.distilbert.modeling_distilbert", layer_class="TransformerBlock",
    attention_class="DistilBertSelfAttention", encoder_output="BaseModelOutput", encoder="transformer",
    attention="attention", q="q_lin", k="k_lin", v="v_lin", attn_out="attention.out_lin", attn_norm="sa_layer_norm",
    ffn_in="ffn.lin1", activation="ffn.activation", ffn_out="ffn.lin2", ffn_norm="output_layer_norm",
    residual_blocks=False, mlp_block="ffn", pooler=None, inputs=("input_ids", "attention_mask"),
    heads=("DistilBertModel", "DistilBertForMaskedLM", "DistilBertForSequenceClassification",
           "DistilBertForTokenClassification", "DistilBertForQuestionAnswering", "DistilBertForMultipleChoice"),
    vocab_heads=("DistilBertForMaskedLM",),
)

RECORDS: dict[str, EncoderRecord] = {
    "bert": BERT,
    "roberta": _roberta_like("Roberta", "roberta"),
    "xlm-roberta": _roberta_like("XLMRoberta", "xlm_roberta"),
    "camembert": _roberta_like("Camembert", "camembert"),
    "electra": ELECTRA,
    "distilbert": DISTILBERT,
}
