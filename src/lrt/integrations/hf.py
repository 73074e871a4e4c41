"""LRT as a Hugging Face transformers model (`pip install 'lrt[hf]'`).

`lrt export hf RUN OUT` writes a folder that `AutoModelForCausalLM.from_pretrained(OUT,
trust_remote_code=True)` and `AutoTokenizer.from_pretrained(OUT)` load offline. The folder's code
files are two lines each: the classes live here, so loading an export needs lrt installed.

The recurrent memory lives in the cache: `LRTCache` (a `DynamicCache`) carries lrt's decoding
state, every layer's keys and values *and* each row's memory vector, so `generate()` needs no side
channel, and beam search moves the memory with the beams. A prompt is read with `config.memory`
(default exact: token by token, what `lrt generate` does), each row on its own positions, so a
left-padded row reads as it would alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..config import LRTConfig
from ..data.tokenizer import BOS, BPETokenizer
from ..decoding import DecodeState, right_padded, select_rows, state_after, step
from ..memory import Memory, read
from ..model import LRT
from ..train.checkpoint import write_tensors

CODE = {
    "configuration_lrt.py": "from lrt.integrations.hf import LRTHFConfig  # noqa: F401  (pip install 'lrt[hf]')\n",
    "modeling_lrt.py": "from lrt.integrations.hf import LRTForCausalLM  # noqa: F401  (pip install 'lrt[hf]')\n",
}


class LRTHFConfig(PretrainedConfig):
    """The transformers config of an exported LRT: its LRTConfig under "lrt", and the memory with
    which a prompt is read (`exact`, `parallel:<schedule>`, `fixed-point`, `zero`)."""

    model_type = "lrt"

    def __init__(self, lrt: dict | None = None, memory: str = "exact", use_cache: bool = True, **kwargs):
        self.lrt = lrt or {}
        self.memory = memory
        self.use_cache = use_cache
        super().__init__(**kwargs)


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


class LRTForCausalLM(PreTrainedModel, GenerationMixin):
    """An lrt model behind transformers' causal-LM interface. forward(input_ids) without a cache
    reads the tokens with `config.memory` (exact by default); with an LRTCache it continues the
    recurrence, one forward per token."""

    config_class = LRTHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

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

    def prepare_inputs_for_generation(self, input_ids, cache=None, attention_mask=None, use_cache=True, **kwargs):
        if cache is not None and cache.state is not None:
            input_ids = input_ids[:, cache.seen :]  # the tokens generated since the last call
        return {"input_ids": input_ids, "attention_mask": attention_mask, "cache": cache, "use_cache": use_cache}

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: LRTCache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if cache is not None and cache.state is not None:  # continue the recurrence, a token at a time
            logits = torch.stack([step(self.model, input_ids[:, i], cache.state) for i in range(input_ids.size(1))], 1)
            cache.seen += input_ids.size(1)
        else:
            logits, state = self._read(input_ids, attention_mask, keep_state=use_cache)
            if use_cache:
                cache = cache if cache is not None else LRTCache()
                cache.state, cache.seen = state, input_ids.size(1)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)

    def _read(self, input_ids, attention_mask, keep_state: bool):
        """Logits of every input column: each row's tokens (where the mask is 1, left or right
        padded) read with config.memory from position 0, as the row alone."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        rows = [row[m].tolist() for row, m in zip(input_ids, mask)]
        if any(not r for r in rows):
            raise ValueError("every row needs at least one token that the attention mask keeps")
        reading = read(self.model, right_padded(rows, input_ids.device), Memory.parse(self.config.memory))
        lengths = torch.tensor([len(r) for r in rows], device=input_ids.device)
        logits = reading.logits.new_zeros(*input_ids.shape, reading.logits.size(-1))
        # row b's j-th kept token sits at its j-th kept column
        cols = torch.cumsum(mask, dim=1) - 1
        b, t = mask.nonzero(as_tuple=True)
        logits[b, t] = reading.logits[b, cols[b, t]]
        state = state_after(self.model, reading, lengths, self.model.config.sequence_len) if keep_state else None
        return logits, state


# the export ---------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level alphabet of GPT-2 (how a byte-level BPE writes bytes): printable bytes stand
    for themselves, the others for 256, 257, ... in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), 256))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def hf_tokenizer(tokenizer) -> PreTrainedTokenizerFast:
    """The tokenizer as a PreTrainedTokenizerFast that puts <|bos|> first, as lrt reads prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if isinstance(tokenizer, BPETokenizer):
        tok = Tokenizer.from_str(tokenizer.tok.to_str())
    else:  # byte-level: token i is byte i, <|bos|> is 256
        vocab = {char: i for i, char in _bytes_to_unicode().items()}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([BOS])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, padding_side="left"
    )


def export_hf(run, out: str | Path) -> Path:
    """Write a trained lrt model (checkpoint.Trained, what load_run returns) as a transformers folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    bos = run.tokenizer.bos_id
    config = LRTHFConfig(
        lrt=run.model.config.to_dict(),
        memory="exact",
        vocab_size=run.model.config.vocab_size,
        bos_token_id=bos,
        eos_token_id=bos,
        pad_token_id=bos,
        architectures=["LRTForCausalLM"],
        auto_map={"AutoConfig": "configuration_lrt.LRTHFConfig", "AutoModelForCausalLM": "modeling_lrt.LRTForCausalLM"},
    )
    config.to_json_file(out / "config.json")  # not save_pretrained: it would copy this module's source once loaded
    weights = {f"model.{k}": v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    write_tensors(weights, out / "model.safetensors", metadata={"format": "pt"})
    for name, text in CODE.items():
        (out / name).write_text(text)
    hf_tokenizer(run.tokenizer).save_pretrained(out)
    (out / "lrt_export.json").write_text(json.dumps({"checkpoint": str(run.path), "step": run.record.get("step")}))
    return out
