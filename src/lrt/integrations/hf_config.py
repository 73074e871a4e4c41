"""The transformers configuration of an exported LRT. `lrt export hf` copies this file into every
export as configuration_lrt.py, so it imports transformers only."""

from transformers import PretrainedConfig


class LRTHFConfig(PretrainedConfig):
    """The transformers config of an exported LRT: its LRTConfig under "lrt", the memory with which
    a prompt is read (`exact`, `parallel:<schedule>`, `fixed-point`, `zero`), and the model's window
    as `max_position_embeddings`, the name other tools read it by."""

    model_type = "lrt"

    def __init__(self, lrt: dict | None = None, memory: str = "exact", use_cache: bool = True, **kwargs):
        self.lrt = lrt or {}
        self.memory = memory
        self.use_cache = use_cache
        window = kwargs.pop("max_position_embeddings", None)
        self.max_position_embeddings = self.lrt.get("sequence_len", window)
        super().__init__(**kwargs)
