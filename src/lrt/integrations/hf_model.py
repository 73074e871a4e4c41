"""LRT behind transformers' causal-LM interface. `lrt export hf` copies this file into every export
as modeling_lrt.py, beside copies of lrt's core modules (the model, its attention, memory,
schedules and decoding), so an export needs only torch and transformers.

The recurrent memory lives in the cache: `LRTCache` (a `DynamicCache`) carries lrt's decoding
state, every layer's keys and values *and* each row's memory vector, so `generate()` needs no side
channel, and beam search moves the memory with the beams. A prompt is read with `config.memory`
(default exact: token by token, what `lrt generate` does), each row on its own positions, so a
left-padded row reads as it would alone. Generation stops at the model's window.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import LRTConfig
from ..decoding import DecodeState, right_padded, select_rows, state_after, step
from ..memory import Memory, read
from ..model import LRT, norm
from ..schedules import merge_passes
from .hf_config import LRTHFConfig


class LRTCache(DynamicCache):
    """generate()'s cache for LRT: lrt's decoding state (keys and values of every layer, each row's
    memory vector and position). Beam search and batch expansion move the memory with the rows;
    rolling the cache back (`crop`, used by assisted decoding) would need an old memory that is not
    kept, and is refused."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.state: DecodeState | None = None
        self.seen = 0  # input columns consumed (a left-padded prompt's width included)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.state is not None:
            self.state = select_rows(self.state, indices.to(self.state.pos.device))

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            rows = torch.arange(self.state.batch_size, device=self.state.pos.device)
            self.state = select_rows(self.state, rows.repeat_interleave(repeats))

    def crop(self, max_length: int) -> None:
        raise ValueError(
            "an LRT cache cannot be cropped: the memory of an earlier position is not kept "
            "(assisted and speculative decoding are not supported)"
        )

    def reset(self) -> None:
        self.state, self.seen = None, 0


class LayerStates:
    """Every block's input and output while the model runs (forward hooks, so the model's code is
    untouched), in transformers' layout: the states entering the first block, then leaving each
    block, the last after the final norm (the ones the head reads). A forward_positions call runs
    the stack's `cache_layers` blocks in order, so the calls group by that count."""

    def __init__(self, model: LRT):
        self.model, self.calls = model, []

    def __enter__(self) -> LayerStates:
        self.handles = [block.register_forward_hook(self.record) for block in self.model.blocks]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def record(self, block, args, output) -> None:
        x, ctx = args[0], args[3]  # block(x, ve, past, ctx)
        self.calls.append((ctx.pos, x, output[0]))

    def states(self, length: int | None = None) -> list[torch.Tensor]:
        """A reading's (B, T, d) states over `length` buffer positions, each position from the
        last call that computed it, at the slot that predicts each next token (PonderLM-2: the
        last of a token's slots); or (length None) a decoding step's: its last call's."""
        L, slots = self.model.config.cache_layers, self.model.config.slots
        groups = [self.calls[i : i + L] for i in range(0, len(self.calls), L)]
        if length is None:
            layers = [groups[-1][0][1]] + [out for _, _, out in groups[-1]]
        else:
            merged = [merge_passes([(g[0][0], g[0][1]) for g in groups], length)]
            merged += [merge_passes([(g[i][0], g[i][2]) for g in groups], length) for i in range(L)]
            layers = [h[:, slots - 1 :: slots] for h in merged]
        return layers[:-1] + [norm(layers[-1])]


class LRTForCausalLM(PreTrainedModel, GenerationMixin):
    """An lrt model behind transformers' causal-LM interface. forward(input_ids) without a cache
    reads the tokens with `config.memory` (exact by default); with an LRTCache it continues the
    recurrence, one forward per token."""

    config_class = LRTHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: LRTHFConfig):
        super().__init__(config)
        if not config.lrt:
            raise ValueError("config.json has no 'lrt' section: this folder is not an LRT export (lrt export hf)")
        self.model = LRT(LRTConfig.from_dict(config.lrt))
        Memory.parse(config.memory)  # a bad memory fails at load
        self.post_init()

    def _init_weights(self, module) -> None:
        """The weights come from the export (or LRT's own init)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # forward makes its own LRTCache on the first call

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loading, with a clear error where the weights do not match the config."""
        kwargs["output_loading_info"] = True
        model, info = super().from_pretrained(*args, **kwargs)
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise ValueError(f"{args[0] if args else ''}: the weights do not match config.json's LRT ({problems})")
        return model

    def get_input_embeddings(self):
        return self.model.wte

    def get_output_embeddings(self):
        return self.model.lm_head

    def resize_token_embeddings(self, *args, **kwargs):
        """Refused in words: besides the token table and the head, every layer's value-embedding
        table has a row per token, and <|pad|> is the id one past the vocabulary, which a larger
        vocabulary would make a real token."""
        raise NotImplementedError(
            "an LRT export cannot change its vocabulary (value-embedding tables have a row per token, and "
            "<|pad|> is the id past the last one): train a run with the tokenizer you need"
        )

    def _set_gradient_checkpointing(self, enable: bool = True, **kwargs) -> None:
        """gradient_checkpointing_enable() (activation_checkpointing_enable()): lrt's own (each block recomputed
        in the backward pass)."""
        self.model.activation_checkpointing = enable

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers' generate, stopped at the model's window: a request for more new tokens than
        the window leaves gets what fits (finish reason: length), rather than an error that loses
        the output."""
        window = self.model.config.sequence_len
        width = (inputs if inputs is not None else kwargs["input_ids"]).shape[-1]
        if width > window:
            raise ValueError(f"the prompt is {width} tokens wide; the model's window is {window} tokens")
        config = generation_config if generation_config is not None else self.generation_config
        asked = kwargs.get("max_new_tokens", config.max_new_tokens)
        if asked is None:
            asked = kwargs.get("max_length", config.max_length) - width
        kwargs["max_new_tokens"] = max(0, min(asked, window - width))
        kwargs.pop("max_length", None)
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, use_cache=True, **kwargs):
        if cache is not None and cache.state is not None:
            input_ids = input_ids[:, cache.seen :]  # the tokens generated since the last call
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}
        if "output_hidden_states" in kwargs:  # generate(output_hidden_states=True) asks through these
            inputs["output_hidden_states"] = kwargs["output_hidden_states"]
        return inputs

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: LRTCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        # <|pad|> sits past the vocabulary: a column that holds it is padding (masked), or a finished
        # row's filler during generation, whose output nobody reads: it is never embedded
        padding = input_ids >= self.model.config.vocab_size
        if attention_mask is None and padding.any():
            attention_mask = ~padding
        input_ids = input_ids.masked_fill(padding, self.config.bos_token_id)
        wants_hidden = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        hidden = None
        if cache is not None and cache.state is not None:  # continue the recurrence, a token at a time
            logits, steps = [], []
            for i in range(input_ids.size(1)):
                with LayerStates(self.model) if wants_hidden else contextlib.nullcontext() as recorder:
                    logits.append(step(self.model, input_ids[:, i], cache.state))
                steps.append(recorder.states() if wants_hidden else None)
            logits = torch.stack(logits, 1)
            hidden = [torch.cat(layer, 1) for layer in zip(*steps)] if wants_hidden else None
            cache.seen += input_ids.size(1)
        else:
            logits, hidden, state = self._read(input_ids, attention_mask, keep_state=use_cache, layers=wants_hidden)
            if use_cache:
                cache = cache if cache is not None else LRTCache()
                cache.state, cache.seen = state, input_ids.size(1)
        loss = None
        if labels is not None:
            targets = labels[:, 1:]
            if attention_mask is not None:  # a token after a masked column has nothing to be predicted from
                targets = targets.masked_fill(~attention_mask[:, :-1].bool(), -100)
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=cache if use_cache else None,
            hidden_states=tuple(hidden) if wants_hidden and hidden is not None else None,
        )

    def _read(self, input_ids, attention_mask, keep_state: bool, layers: bool = False):
        """Logits of every input column: each row's tokens (where the mask is 1, left or right
        padded) read with config.memory from position 0, as the row alone, with their hidden
        states: the final ones, or with `layers` every layer's (LayerStates; a looped stack's every
        pass counts)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rows = [row[m].tolist() for row, m in zip(input_ids, mask)]
        if any(not r for r in rows):
            raise ValueError("every row needs at least one token that the attention mask keeps")
        window = self.model.config.sequence_len
        if max(map(len, rows)) > window:
            raise ValueError(f"a row of {max(map(len, rows))} tokens is longer than the model's window of {window}")
        idx = right_padded(rows, input_ids.device)
        recorder = LayerStates(self.model)
        with recorder if layers else contextlib.nullcontext():
            reading = read(self.model, idx, Memory.parse(self.config.memory))
        hidden = recorder.states(idx.size(1) * self.model.config.slots) if layers else [reading.output.hidden]
        lengths = torch.tensor([len(r) for r in rows], device=input_ids.device)
        # row b's j-th kept token sits at its j-th kept column (masked columns: zeros)
        cols = torch.cumsum(mask, dim=1) - 1
        b, t = mask.nonzero(as_tuple=True)
        placed = []
        for values in (reading.logits, *hidden):
            out = values.new_zeros(*input_ids.shape, values.size(-1))
            out[b, t] = values[b, cols[b, t]]
            placed.append(out)
        state = state_after(self.model, reading, lengths, self.model.config.sequence_len) if keep_state else None
        return placed[0], placed[1:], state
