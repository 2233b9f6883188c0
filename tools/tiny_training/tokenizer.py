"""One byte-level BPE tokenizer per family, wrapped as the PreTrainedTokenizerFast the models ship with."""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
LLAMA_BOS, LLAMA_EOS = "<|begin_of_text|>", "<|end_of_text|>"  # Llama 3's names
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_bpe(docs: list[str], vocab_size: int, specials: list[str]) -> Tokenizer:
    """Byte-level BPE (as GPT-2/RoBERTa): no unknown bytes, so any text round-trips."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def gpt2_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_bpe(docs, vocab_size, [EOS])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # GPT-2 has no pad token: pad with EOS, on the left so batched generation continues the real text.
    # token_type_ids must not be returned: GPT-2 would add their (untrained) embeddings to the input.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=512,
    )


def llama_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_bpe(docs, vocab_size, [LLAMA_BOS, LLAMA_EOS])
    bos_id = tok.token_to_id(LLAMA_BOS)
    # As Llama 3: every encoded text starts with BOS (training rows do too, see families.train_llama).
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{LLAMA_BOS} $A",
                pair=f"{LLAMA_BOS} $A {LLAMA_BOS}:1 $B:1",
                special_tokens=[(LLAMA_BOS, bos_id)],
            ),
        ]
    )
    # Llama has no pad token; pad with EOS on the left (batched generation continues the real text), as users do.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=LLAMA_BOS,
        eos_token=LLAMA_EOS,
        unk_token=LLAMA_EOS,
        pad_token=LLAMA_EOS,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=512,
    )


def bert_tokenizer(docs: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = train_bpe(docs, vocab_size, BERT_SPECIALS)
    # lstrip: in "The [MASK] is" the mask absorbs the space before it, as the masked word's token would (RoBERTa).
    tok.add_special_tokens([AddedToken("[MASK]", lstrip=True, special=True)])
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),
            processors.TemplateProcessing(
                single="[CLS] $A [SEP]",
                pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right",
        model_max_length=512,
    )
