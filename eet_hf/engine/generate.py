"""`model.generate` for accelerated decoders: HF prepares the call, eet's loop decodes it.

The installed `generate` calls HF's own `GenerationMixin.generate` with `custom_generate=eet_decode`, so HF
validates the arguments, merges generation_config defaults, builds the attention mask, position ids, logits
processors and stopping criteria exactly as for its own loop — then `eet_decode` runs eet's loop when it can
translate all of them (policy.translate), and HF's `_sample` loop on the accelerated forward when it cannot,
logged once with the reason. Beam search, assisted decoding, streamers and the like never reach eet_decode.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

import torch
from transformers.generation.configuration_utils import GenerationMode
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerationMixin

from eet_hf._log import warn_once
from eet_hf.module_walk import TensorDicts

from .call_cache import PreparedConfigs
from .decode_loop import DecodeEngine
from .decode_model import DecodeModel, tensor_signature
from .kv_cache import EetCache, round_capacity
from .policy import translate

ENGINE_ATTR = "_eet_decode_engine"
# generate() arguments HF drops or handles outside the decoding method when custom_generate is set.
_HF_ONLY_KWARGS = ("assistant_model", "streamer", "custom_generate", "tokenizer", "assistant_tokenizer",
                   "synced_gpus", "cache_implementation", "prefix_allowed_tokens_fn", "negative_prompt_ids",
                   "negative_prompt_attention_mask")
_FAST_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)
# Model kwargs the fast loop understands; any other non-None one (token_type_ids, inputs_embeds, ...) goes to HF.
_KNOWN_MODEL_KWARGS = ("attention_mask", "position_ids", "logits_to_keep", "use_cache", "cache", "past_key_values")
_CACHE_KEYS = ("cache", "past_key_values")


@dataclasses.dataclass
class EngineHandle:
    engine: DecodeEngine
    build: Callable[[torch.nn.Module], DecodeModel]  # the engine's view of the model, rebuilt per call (by reference)
    # Why one call (its cache capacity in tokens) cannot run in the engine, or None.
    call_refusal: Callable[[torch.nn.Module, int], str | None] | None = None
    # The last view `build` made and the storage signature of the model it was made for: calls on an unchanged
    # model reuse it instead of walking the module tree again (part of every call's time to first token).
    view: DecodeModel | None = None
    view_signature: tuple = ()
    # Host work repeated per call, kept between calls (call_cache.py): HF's prepared generation config and the
    # decoding-mode decision per call form, and the module tree's parameter and buffer dicts.
    prepared: PreparedConfigs | None = None
    tensors: TensorDicts = dataclasses.field(default_factory=TensorDicts)

    def model_view(self, model: torch.nn.Module, signature: tuple) -> DecodeModel:
        """The view for `model`, whose tensor_signature over parameters and buffers is `signature`."""
        if self.view is None or signature != self.view_signature:
            self.view = self.build(model)
            self.view_signature = self.signature(model)  # packing moves some
        return self.view

    def signature(self, model: torch.nn.Module) -> tuple:
        """Address, dtype and device of every parameter and buffer, once per generate call, shared by the view
        cache, the engine's graphs and the device and offload checks."""
        return tensor_signature(self.tensors.tensors(model))


def install(model: torch.nn.Module, ctx, build: Callable[[torch.nn.Module], DecodeModel],
            call_refusal: Callable[[torch.nn.Module, int], str | None] | None = None) -> None:
    """Give `model` eet's generate (and the engine that backs it); PatchContext undo removes both."""
    hf_generate = type(model).generate

    @functools.wraps(hf_generate)
    def generate(self, *args: Any, **kwargs: Any):
        reason = _refusal(self, args, kwargs)
        if reason is not None:
            warn_once(f"generate: {reason}: HF's generate runs (on eet's fused forward)")
            return hf_generate(self, *args, **kwargs)
        return hf_generate(self, *args, custom_generate=eet_decode, **kwargs)

    hf_prepare = type(model)._prepare_generation_config
    handle = EngineHandle(DecodeEngine(), build, call_refusal, prepared=PreparedConfigs(hf_prepare))
    ctx.bind(model, ENGINE_ATTR, handle)
    ctx.bind(model, "generate", types.MethodType(generate, model))
    if hf_prepare is GenerationMixin._prepare_generation_config:
        # HF's generate asks for it as self._prepare_generation_config(...): the instance attribute answers.
        @functools.wraps(hf_prepare)
        def prepare_generation_config(self, generation_config=None, **kwargs: Any):
            return handle.prepared.prepare(self, generation_config, kwargs)

        ctx.bind(model, "_prepare_generation_config", types.MethodType(prepare_generation_config, model))
    ctx.report.add_cuda_only("generate (eet decode loop, CUDA graphs)", "eet's decode loop, one eager step per token")


def memory_report(model: torch.nn.Module) -> dict[str, int] | None:
    handle = model.__dict__.get(ENGINE_ATTR)
    return None if handle is None else handle.engine.memory_report()


def _refusal(model, args: tuple, kwargs: dict) -> str | None:
    """Why this call goes to HF's generate as it is, or None when eet_decode may take it."""
    if model.training:
        return "training mode"
    if len(args) > 2:
        return "positional arguments beyond inputs and generation_config"
    for name in _HF_ONLY_KWARGS:
        if kwargs.get(name) not in (None, False):
            return f"`{name}`"
    config = args[1] if len(args) > 1 else kwargs.get("generation_config")
    rest = {k: v for k, v in kwargs.items() if k != "generation_config"}
    handle: EngineHandle = model.__dict__[ENGINE_ATTR]
    try:
        return handle.prepared.mode_refusal(model, config, rest, _mode_refusal)
    except Exception as error:  # HF raises the same error, with its own message, when it runs the call
        return f"generation config not accepted ({error})"


def _mode_refusal(prepared) -> str | None:
    """Why HF's generate would pick a decoding mode eet does not run for a call whose prepared generation config
    is `prepared`, or None (kept per call form, call_cache.PreparedConfigs)."""
    mode = prepared.get_generation_mode(None)
    if mode not in _FAST_MODES:
        return f"generation mode {mode.value if hasattr(mode, 'value') else mode}"
    return None


def _left_padding(attention_mask: torch.Tensor | None, batch: int, prompt_len: int, device: torch.device):
    """(pads int32 [batch], has_padding) when the mask is left padding (or absent), else None. One host read."""
    if attention_mask is None:
        return torch.zeros(batch, dtype=torch.int32, device=device), False
    mask = attention_mask.to(device=device, dtype=torch.bool)
    pads = prompt_len - mask.sum(-1)
    expected = torch.arange(prompt_len, device=device)[None, :] >= pads[:, None]
    is_left, any_pad = torch.stack([(mask == expected).all(), (pads > 0).any()]).tolist()
    return (pads.to(torch.int32), bool(any_pad)) if is_left else None


def _decode_refusal(model, generation_config, model_kwargs: dict, signature: tuple) -> str | None:
    for key, value in model_kwargs.items():
        if key not in _KNOWN_MODEL_KWARGS and value is not None:
            return f"model input `{key}`"
    if not model_kwargs.get("use_cache", True):
        return "use_cache=False"
    cache = next((model_kwargs[k] for k in _CACHE_KEYS if model_kwargs.get(k) is not None), None)
    if cache is not None and cache.get_seq_length() > 0:
        return "a cache that already holds tokens"
    if generation_config.return_dict_in_generate and (
        generation_config.output_attentions or generation_config.output_hidden_states
    ):
        return "output_attentions / output_hidden_states"
    devices = {device for _, _, device in signature}
    if any(device.type == "meta" for device in devices):
        # accelerate's offload hooks (cpu_offload, device_map offload) load weights around each module's forward;
        # HF's loop runs the model's (eet's fused) forward through them, the engine would read meta tensors.
        return "weights offloaded by accelerate hooks (meta device)"
    if len(devices) > 1:
        return "a model spread over several devices"
    return None


def eet_decode(self, input_ids, logits_processor, stopping_criteria, generation_config, synced_gpus=False,
               streamer=None, **model_kwargs):
    """HF's decoding-method interface (as `_sample`): eet's loop, or HF's `_sample` when it cannot translate."""
    prompt_len = input_ids.shape[1]
    handle: EngineHandle = self.__dict__[ENGINE_ATTR]
    signature = handle.signature(self)
    reason = _decode_refusal(self, generation_config, model_kwargs, signature)
    policy = None
    if reason is None:
        policy = translate(logits_processor, stopping_criteria, generation_config, prompt_len)
        reason = policy if isinstance(policy, str) else None
    if reason is None and handle.call_refusal is not None:
        reason = handle.call_refusal(self, round_capacity(prompt_len + policy.max_new_tokens))
    padding = None
    if reason is None:
        w = handle.model_view(self, signature)
        device = w.device
        padding = _left_padding(model_kwargs.get("attention_mask"), input_ids.shape[0], prompt_len, device)
        reason = "right padding or padding with holes" if padding is None else None
    if reason is not None:
        warn_once(f"generate: {reason}: HF's decoding loop runs (on eet's fused forward)")
        return type(self)._sample(self, input_ids, logits_processor=logits_processor,
                                  stopping_criteria=stopping_criteria, generation_config=generation_config,
                                  synced_gpus=synced_gpus, streamer=streamer, **model_kwargs)
    input_ids = input_ids.to(device)
    position_ids = model_kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(prompt_len, device=device).expand(input_ids.shape[0], -1)
    position_ids = position_ids.to(device)
    if w.max_positions is not None:
        _check_positions(position_ids, policy.max_new_tokens, w.max_positions)
    pads, has_padding = padding
    want_dict = generation_config.return_dict_in_generate
    result = handle.engine.run(
        w, input_ids, pads, has_padding, position_ids, policy,
        keep_scores=bool(want_dict and generation_config.output_scores),
        keep_logits=bool(want_dict and generation_config.output_logits), weights=handle.view_signature,
    )
    sequences = torch.cat([input_ids, result.new_tokens], dim=1)
    if not want_dict:
        return sequences
    return _output(sequences, result, prompt_len)


# HF's generate reads the decoding method's signature twice per call (which mode arguments it takes); a stored
# signature is returned as it is instead of being rebuilt from the code object each time.
eet_decode.__signature__ = inspect.signature(eet_decode)


def _check_positions(position_ids: torch.Tensor, max_new: int, max_positions: int) -> None:
    # The last token fed to the model sits at position last_prompt_position + max_new - 1.
    highest = int(position_ids[:, -1].max()) + max_new - 1
    if highest >= max_positions:
        raise ValueError(
            f"eet_hf generate: the prompt plus max_new_tokens={max_new} reaches position {highest}, beyond the "
            f"model's {max_positions} position embeddings; shorten the prompt or max_new_tokens"
        )


def _output(sequences: torch.Tensor, result, prompt_len: int) -> GenerateDecoderOnlyOutput:
    filled = sequences.shape[1] - 1  # HF's cache never holds the last chosen token
    cache = EetCache(reserve=filled)
    for index in range(result.kv.shape[0]):
        cache.update(result.kv[index, 0, :, :, :filled], result.kv[index, 1, :, :, :filled], index)
    fields = {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)}
    cache_field = "cache" if "cache" in fields else "past_key_values"
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=tuple(result.scores) if result.scores is not None else None,
        logits=tuple(result.logits) if result.logits is not None else None,
        **{cache_field: cache},
    )
