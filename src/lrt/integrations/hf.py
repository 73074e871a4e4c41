"""LRT as a Hugging Face transformers model (`pip install 'lrt[hf]'`): `lrt export hf RUN OUT`.

The export is self-contained: `AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)`
and `AutoTokenizer.from_pretrained(OUT)` load it offline with only torch and transformers
installed. Its code files are hf_config.py (as configuration_lrt.py), hf_model.py (as
modeling_lrt.py) and lrt's core modules, copied as they are (CORE_MODULES: they import one
another, torch and numpy, nothing else), each headed by the lrt version that wrote it. The
classes are importable from here too, for code that has lrt.
"""

from __future__ import annotations

import json
import os
import re
from importlib import metadata, resources
from pathlib import Path

from transformers import GenerationConfig, PreTrainedTokenizerFast

from ..data.tokenizer import BOS, BPETokenizer
from ..train.checkpoint import write_tensors
from .hf_config import LRTHFConfig
from .hf_model import LRTCache, LRTForCausalLM

__all__ = ["LRTCache", "LRTForCausalLM", "LRTHFConfig", "export_hf", "hf_tokenizer"]

# what modeling_lrt.py needs of lrt, closed under their imports (test_integration_hf checks it)
CORE_MODULES = ("attention", "config", "decoding", "memory", "model", "ponder", "runtime", "schedules")
# padding, one id past the model's vocabulary: never read (a masked column) nor embedded; named in the
# tokenizer and generation_config.json (config.json's pad_token_id must lie inside the vocabulary)
PAD = "<|pad|>"


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


def hf_tokenizer(tokenizer, window: int) -> PreTrainedTokenizerFast:
    """The tokenizer as a PreTrainedTokenizerFast that puts <|bos|> first, as lrt reads prompts, pads
    on the left with its own <|pad|> (so transformers can tell padding from a leading <|bos|>), and
    knows the model's window."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if isinstance(tokenizer, BPETokenizer):
        tok = Tokenizer.from_str(tokenizer.tok.to_str())
    else:  # byte-level: token i is byte i, <|bos|> is 256
        vocab = {char: i for i, char in _bytes_to_unicode().items()}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([BOS])
    tok.add_special_tokens([PAD])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, tokenizer.bos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=BOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=window,
    )


def lrt_version() -> str:
    try:
        return metadata.version("lrt")
    except metadata.PackageNotFoundError:
        return "unknown"


def code_files() -> dict[str, str]:
    """The export's code files: name -> text, needing only torch, numpy and transformers."""
    header = f"# Written by lrt {lrt_version()} (lrt export hf); needs only torch, numpy and transformers.\n"
    package = resources.files("lrt")
    files = {f"{name}.py": package.joinpath(f"{name}.py").read_text(encoding="utf-8") for name in CORE_MODULES}
    files["configuration_lrt.py"] = package.joinpath("integrations/hf_config.py").read_text(encoding="utf-8")
    modeling = package.joinpath("integrations/hf_model.py").read_text(encoding="utf-8")
    modeling = modeling.replace("from .hf_config import", "from .configuration_lrt import")
    files["modeling_lrt.py"] = re.sub(r"^from \.\.(\w+) import", r"from .\1 import", modeling, flags=re.M)
    return {name: header + text for name, text in files.items()}


MODEL_CARD = """---
library_name: transformers
tags: [lrt, latent-recurrent-transformer, custom_code]
---
# {name}

A Latent Recurrent Transformer (LRT, arXiv 2605.26797) exported by lrt {version}: {described}.
Each position also receives a memory vector, the normed hidden state of a source layer at the
position before; decoding is one forward per token with a KV cache plus that vector.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{name}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{name}", trust_remote_code=True)
batch = tokenizer(["To be"], return_tensors="pt")
print(tokenizer.decode(model.generate(**batch, max_new_tokens=40)[0], skip_special_tokens=True))
```

- Window: {window} tokens (`max_position_embeddings`); generation stops there.
- `model(input_ids)` reads the tokens with exact memory (token by token); `memory=...` in
  `from_pretrained` changes it (`parallel:interleaved:2`, `fixed-point`, `zero`).
- Trained for {step} steps (checkpoint {checkpoint}).
- Needs only torch and transformers; the code files are lrt's own.
"""


def export_hf(run, out: str | Path) -> Path:
    """Write a trained lrt model (checkpoint.Trained, what load_run returns) as a transformers folder."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: export into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg = run.model.config
    bos, pad, window = run.tokenizer.bos_id, cfg.vocab_size, cfg.sequence_len
    config = LRTHFConfig(
        lrt=cfg.to_dict(),
        memory="exact",
        vocab_size=cfg.vocab_size,
        bos_token_id=bos,
        eos_token_id=bos,
        architectures=["LRTForCausalLM"],
        auto_map={"AutoConfig": "configuration_lrt.LRTHFConfig", "AutoModelForCausalLM": "modeling_lrt.LRTForCausalLM"},
        lrt_version=lrt_version(),
    )
    config.to_json_file(out / "config.json")  # not save_pretrained: it would copy this module's source once loaded
    GenerationConfig(bos_token_id=bos, eos_token_id=bos, pad_token_id=pad, max_length=window).save_pretrained(out)
    weights = {f"model.{k}": v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    write_tensors(weights, out / "model.safetensors", metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out / "model.safetensors", 0o666 & ~umask)  # written through a private temporary file
    for name, text in code_files().items():
        (out / name).write_text(text)
    hf_tokenizer(run.tokenizer, window).save_pretrained(out)
    (out / "README.md").write_text(
        MODEL_CARD.format(
            name=out.name,
            version=lrt_version(),
            described=cfg.describe(),
            window=window,
            step=run.record.get("step"),
            checkpoint=run.path.name,
        )
    )
    (out / "lrt_export.json").write_text(
        json.dumps({"checkpoint": str(run.path), "step": run.record.get("step"), "lrt_version": lrt_version()})
    )
    return out
