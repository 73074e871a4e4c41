"""The Latent Recurrent Transformer (LRT_SPEC sections 1-2).

A nanochat-style decoder where position t also receives m_t = norm(h^(s)_{t-1}), the normed
state of source layer s at the previous position, through Residual Injection (x += g_l m) and
KV Projection (the layer's keys/values gated together with Wk m, Wv m).

Everything the model ever computes goes through one method, `forward_positions`: run the tokens
at some positions, given their memory, against a key/value buffer that holds the other
positions. The zero-memory forward, every pass of every training schedule (schedules.py) and
every decoding step (decoding.py) are calls of it. Zero memory is passed as `memory=None`,
which means m = 0 fed through the pathway: Wk 0 = Wv 0 = 0 and g 0 = 0, so the feedback terms
vanish exactly, while the gates still scale the layer's own keys and values.

Parameters of the recurrent pathway are the ones named `mem_*`; `injection="none"` creates
none of them and is the plain transformer baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import KVBuffer, PassContext, check_attention, resolve_attention
from .config import LRTConfig
from .ponder import run as run_ponder
from .runtime import room_for_graphs
from .schedules import Schedule, ScheduleOutput, default_schedule, run_schedule


def norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on (B, T, H, D) by rotating the two halves of the head dimension."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, config: LRTConfig, layer: int):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.window(layer)
        self.gate_channels = config.gate_channels
        d = config.n_embd
        self.c_q = nn.Linear(d, config.n_head * config.head_dim, bias=False)
        self.c_k = nn.Linear(d, config.kv_dim, bias=False)
        self.c_v = nn.Linear(d, config.kv_dim, bias=False)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, d, bias=False)
        self.ve_gate = (
            nn.Linear(config.gate_channels, config.n_kv_head, bias=False) if config.has_value_embed(layer) else None
        )
        kv_target = config.is_target(layer) and config.uses_kv
        # per-head gates (own, memory) mixing the memory's key/value into this layer's
        self.mem_gate = nn.Linear(config.gate_channels, 2 * config.n_kv_head, bias=False) if kv_target else None
        # LRT-layerwise: this layer's own Wk, Wv (LRT-shared keeps one pair on the model)
        layerwise = kv_target and config.projection == "layerwise"
        self.mem_kv = nn.Linear(d, 2 * config.kv_dim, bias=False) if layerwise else None

    def forward(self, x, ve, past: tuple, ctx: PassContext):
        """Attention output and this layer's new buffered keys and values (from `past`)."""
        B, T, _ = x.shape
        memory = ctx.memory
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        dtype = q.dtype  # the matmul dtype (bfloat16 under autocast); norms and value embeddings may upcast
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        gate_input = x[..., : self.gate_channels]
        if ve is not None:
            v = v + 2 * torch.sigmoid(self.ve_gate(gate_input)).unsqueeze(-1) * ve.view_as(v)
        if self.mem_gate is not None:  # KV Projection
            own, mem = (2 * torch.sigmoid(self.mem_gate(gate_input))).unsqueeze(-1).chunk(2, dim=2)
            k, v = own * k, own * v
            if memory is not None:
                mem_kv = self.mem_kv(memory) if self.mem_kv is not None else ctx.shared_mem_kv
                k_mem, v_mem = mem_kv.view(B, T, 2 * self.n_kv_head, self.head_dim).chunk(2, dim=2)
                k, v = torch.addcmul(k, mem, k_mem), torch.addcmul(v, mem, v_mem)
        q, k = norm(rotate(q, ctx.cos, ctx.sin)), norm(rotate(k, ctx.cos, ctx.sin))
        q, k, v = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
        keys, values = ctx.merge(past, k, v)
        y = ctx.attend(self.window, q, keys, values)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1)), (keys, values)


class MLP(nn.Module):
    def __init__(self, config: LRTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: LRTConfig, layer: int):
        super().__init__()
        self.attn = Attention(config, layer)
        self.mlp = MLP(config)
        scalars = config.residual_scalars
        # scalars of shape (1,), not (): FSDP2 shards only tensors with a dimension
        self.resid_scale = nn.Parameter(torch.ones(1)) if scalars else None
        self.x0_scale = nn.Parameter(torch.ones(1)) if scalars else None
        residual_target = config.is_target(layer) and config.uses_residual
        self.mem_scale = nn.Parameter(torch.ones(1)) if residual_target else None  # g_l

    def forward(self, x, ve, past: tuple, ctx: PassContext):
        """The block's output and its layer's new buffered keys and values: a pure function of its
        inputs (compiled once for every layer, and safe to recompute for activation checkpointing)."""
        if self.resid_scale is not None:
            x = self.resid_scale * x + self.x0_scale * ctx.x0
        if self.mem_scale is not None and ctx.memory is not None:  # Residual Injection: x + g_l m
            x = torch.addcmul(x, self.mem_scale, ctx.memory)
        y, kv = self.attn(norm(x), ve, past, ctx)
        x = x + y
        return x + self.mlp(norm(x)), kv


PATHWAY_STREAM = 0x4C5254  # "LRT": offsets the pathway's seed from the backbone's


def pathway_generator(device: torch.device) -> torch.Generator | None:
    """The pathway's own random stream, derived from the seed torch was given (torch.manual_seed),
    so it is reproducible and leaves the backbone's draws untouched (None on the meta device,
    where nothing is drawn)."""
    if device.type == "meta":
        return None
    return torch.Generator(device=device).manual_seed((torch.initial_seed() + PATHWAY_STREAM) % 2**64)


class LRT(nn.Module):
    """The model. `attention` chooses how subset passes attend (attention.py: auto, sdpa, flex); it
    belongs to this model, so models with different backends share a process.

    Parameters are created on the meta device and materialised on `device` (default: torch's
    current default device) before `init_weights`, so nothing is initialised twice. For a model
    too large to build on one device: `with torch.device("meta"): model = LRT(config)`, shard or
    move it, then `model.to_empty(device=...)` and `model.init_weights()`."""

    def __init__(
        self,
        config: LRTConfig,
        *,
        attention: str = "auto",
        activation_checkpointing: bool = False,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        self.config = config
        self.attention = attention
        self.activation_checkpointing = activation_checkpointing  # recompute each block in backward
        d, V = config.n_embd, config.vocab_size
        with torch.device("meta"):
            self.wte = nn.Embedding(V, d)
            self.value_embeds = nn.ModuleDict(
                {str(l): nn.Embedding(V, config.kv_dim) for l in range(config.n_layer) if config.has_value_embed(l)}
            )
            self.blocks = nn.ModuleList(Block(config, l) for l in range(config.n_layer))
            shared = config.uses_kv and config.projection == "shared"
            self.mem_kv = nn.Linear(d, 2 * config.kv_dim, bias=False) if shared else None  # LRT-shared Wk, Wv
            self.lm_head = nn.Linear(d, V, bias=False)
        self.to_empty(device=device if device is not None else torch.get_default_device())
        self.init_weights()

    @property
    def attention(self) -> str:
        return self._attention

    @attention.setter
    def attention(self, name: str) -> None:
        self._attention = check_attention(name)

    @torch.no_grad()
    def init_weights(self):
        """nanochat's init: output projections zero, input projections uniform with std 1/sqrt(d),
        gates zero (2 sigmoid(0) = 1, neutral). The backbone draws from torch's default generator
        and the pathway's projections from their own (`pathway_generator`), so at one seed an LRT
        and its baseline start from the same backbone: a comparison of the two is paired."""
        cfg = self.config
        s = math.sqrt(3.0 / cfg.n_embd)
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        inputs = [emb.weight for emb in self.value_embeds.values()]
        pathway = [] if self.mem_kv is None else [self.mem_kv.weight]
        for block in self.blocks:
            attn = block.attn
            inputs += [attn.c_q.weight, attn.c_k.weight, attn.c_v.weight, block.mlp.c_fc.weight]
            if attn.mem_kv is not None:
                pathway.append(attn.mem_kv.weight)
            nn.init.zeros_(attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
            for gate in (attn.ve_gate, attn.mem_gate):
                if gate is not None:
                    nn.init.zeros_(gate.weight)
            if block.resid_scale is not None:
                block.resid_scale.fill_(1.0)
                block.x0_scale.fill_(0.1)
            if block.mem_scale is not None:
                block.mem_scale.fill_(cfg.residual_init)
        for w in inputs:
            nn.init.uniform_(w, -s, s)
        generator = pathway_generator(self.wte.weight.device)
        for w in pathway:
            nn.init.uniform_(w, -s, s, generator=generator)

    # the one computation ------------------------------------------------------------------------

    def rotary(self, pos: torch.Tensor, dtype: torch.dtype):
        cfg = self.config
        calc = torch.float64 if dtype == torch.float64 else torch.float32
        inv_freq = cfg.rope_base ** -(torch.arange(0, cfg.head_dim, 2, device=pos.device, dtype=calc) / cfg.head_dim)
        freqs = pos.to(calc).unsqueeze(-1) * inv_freq
        return freqs.cos().to(dtype).unsqueeze(-2), freqs.sin().to(dtype).unsqueeze(-2)  # broadcast over heads

    def forward_positions(
        self,
        idx: torch.Tensor,
        pos: torch.Tensor,
        memory: torch.Tensor | None,
        buffer: KVBuffer,
        full: bool = False,
        kv_len: int | None = None,
        span: range | None = None,
        inputs: torch.Tensor | None = None,
        token_pos: torch.Tensor | None = None,
        ves: dict[str, torch.Tensor] | None = None,
    ):
        """Compute tokens `idx` (B, Tq) at positions `pos` ((Tq,) or (B, Tq)) with memory `memory`
        (B, Tq, d; None is zero memory), attending to `buffer`, into which their keys and values are
        written. `span` repeats 1-D positions as a range (it lets attention skip keys no query
        needs). Returns the final normed hidden states and the normed source states (B, Tq, d).

        PonderLM-2 (ponder.py) computes slots, not only tokens: `inputs` (B, Tq, d) replaces the
        normed token embeddings (a latent thought is fed as it is), and `token_pos` gives each slot's
        token position for RoPE (default `pos`); `pos` is then the slot's place in the buffer.

        `inputs` and `ves` may also bring `idx`'s embeddings looked up already (`embeddings`): a
        schedule looks a row up once for all its passes, so the tables' gradients are built once."""
        cfg = self.config
        if cfg.reset_memory_at_bos and memory is not None:  # memory never crosses into the next document
            memory = memory.masked_fill((idx == cfg.bos_id).unsqueeze(-1), 0.0)
        x = x0 = self.embed(idx) if inputs is None else inputs
        ctx = PassContext(
            pos,
            span,
            full,
            kv_len,
            buffer.length,
            buffer.inplace,
            *self.rotary(pos if token_pos is None else token_pos, x.dtype),
            x0=x0,
            memory=memory,
            backend=resolve_attention(self.attention, idx.device),
        )
        ctx.shared_mem_kv = self.mem_kv(memory) if self.mem_kv is not None and memory is not None else None
        ctx.prepare(block.attn.window for block in self.blocks)
        checkpointed = self.activation_checkpointing and torch.is_grad_enabled()
        source = None
        ves = self.value_embeddings(idx) if ves is None else ves
        for i in range(cfg.cache_layers):  # a looped transformer runs the stack `loops` times
            layer, block = i % cfg.n_layer, self.blocks[i % cfg.n_layer]
            past = (buffer.k[i], buffer.v[i])
            if checkpointed:  # keep the block's inputs only; recompute its insides in backward
                x, kv = checkpoint(block, x, ves.get(str(layer)), past, ctx, use_reentrant=False)
            else:
                x, kv = block(x, ves.get(str(layer)), past, ctx)
            buffer.store(i, *kv, full)
            if layer + 1 == cfg.source_layer:
                source = x  # the last loop's (a looped model has no pathway to feed)
        x = norm(x)
        if cfg.source_layer == cfg.n_layer:  # h^(L) is taken after the final norm
            source = x
        return x, norm(source)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The normed token embeddings: the input of every block stack (in the dtype of the matrices,
        where the tables are kept in bfloat16: embeddings_to_bf16)."""
        return norm(self.wte(idx).to(self.lm_head.weight.dtype))

    def value_embeddings(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The value embeddings of `idx`, by layer."""
        return {layer: embed(idx).to(self.lm_head.weight.dtype) for layer, embed in self.value_embeds.items()}

    def embeddings_to_bf16(self) -> None:
        """Keep the token and value embedding tables in bfloat16 (nanochat does): half their memory and
        their optimizer state's, where the tables are most of the parameters (d20: 420M of 503M)."""
        self.wte.to(torch.bfloat16)
        self.value_embeds.to(torch.bfloat16)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits with soft-capping, computed in at least float32."""
        logits = self.lm_head(h)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        cap = self.config.logit_softcap
        return cap * torch.tanh(logits / cap) if cap else logits

    def head_nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The summed cross-entropy of the head's logits at `h` (B, T, d) against `targets` (B, T;
        -1 is not counted): the training loss's head, one region for compile_model to fuse."""
        return F.cross_entropy(self.head(h).flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="sum")

    def deferred_head(self, device_type: str):
        """`head` as it would run now (grad mode, autocast), to be called later: a schedule's
        output computes its logits only when they are read."""
        grad = torch.is_grad_enabled()
        autocast = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)

        def head(h: torch.Tensor) -> torch.Tensor:
            with torch.set_grad_enabled(grad), torch.autocast(device_type, dtype=dtype, enabled=autocast):
                return self.head(h)

        return head

    # public entry points ------------------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        schedule: Schedule | None = None,
        return_logits: bool = True,
    ) -> torch.Tensor | ScheduleOutput:
        """`model(idx)` is the zero-memory parallel forward (PonderLM-2: its Jacobi forward) and returns
        logits (B, T, vocab).
        With targets or a schedule it runs the schedule (default: Baseline, zero memory; PonderLM-2:
        Jacobi) and returns
        a ScheduleOutput: the loss and per-pass losses, and logits (merged and per pass) computed
        from the passes' hidden states only when read, so a training step that reads the loss pays
        for no logits beyond its loss. `return_logits=False` also drops those hidden states."""
        self._check_input(idx, targets)
        if targets is None and schedule is None and not self.config.latent_thoughts:
            T = idx.size(1)
            pos = torch.arange(T, device=idx.device)
            buffer = KVBuffer(self.config.cache_layers, T)
            h, _ = self.forward_positions(idx, pos, None, buffer, full=True, span=range(T))
            return self.head(h)
        if self.config.latent_thoughts:
            output = run_ponder(
                self, idx, schedule or default_schedule(self.config), targets=targets, return_logits=return_logits
            )[0]
            return output.logits if targets is None and schedule is None else output
        schedule = schedule or default_schedule(self.config)
        return run_schedule(self, idx, schedule, targets=targets, return_logits=return_logits)

    def _check_input(self, idx: torch.Tensor, targets: torch.Tensor | None) -> None:
        if idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32) or idx.size(1) == 0:
            raise ValueError(
                f"idx must be a non-empty (batch, time) integer tensor, got {tuple(idx.shape)} {idx.dtype}"
            )
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")


def compile_model(model: LRT) -> LRT:
    """Regional compilation: each block is compiled, and the graph of one block serves every layer
    and every pass with the same shapes (blocks are pure functions of their inputs), so compile
    time does not grow with depth x passes as one graph of the unrolled schedule did. Shapes are
    static (dynamic=False): a schedule has a few pass lengths, each its own graph.

    Each block's compiled call enters runtime.room_for_graphs itself (the graphs of every layer
    kind x pass kind, of every model in the process, exceed dynamo's default limit). The limit is
    raised by what compiles, around exactly the compiled calls, so the model carries no flag saying
    it was compiled: forward_positions stays the same pure loop for an eager and a compiled model,
    and no caller (trainer, bench, tests) can forget the room. The alternatives were worse: raising
    the limit in every caller repeats it and fails silently where forgotten, and reading torch's
    per-module compile state from forward_positions puts run-time state back into the model."""
    for block in model.blocks:
        block.compile(dynamic=False)
        block._compiled_call_impl = with_room_for_graphs(block._compiled_call_impl)  # what compile() set
    # the head and loss as one graph: softcap, float32 cast and cross-entropy fused, forward and
    # backward, instead of eager passes over (tokens, vocab) float32 logits
    model.head_nll = with_room_for_graphs(torch.compile(model.head_nll, dynamic=False))
    return model


def with_room_for_graphs(compiled):
    """`compiled` called inside room_for_graphs, except while dynamo traces a caller (a compiled
    whole model inlines the block, and its config must not change while traced)."""

    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return compiled(*args, **kwargs)
        with room_for_graphs():
            return compiled(*args, **kwargs)

    return call


# parameter accounting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    pathway: int  # the recurrent pathway's parameters (named mem_*)

    @property
    def share(self) -> float:
        return self.pathway / self.total

    def __str__(self) -> str:
        return f"{self.total:,} parameters, of which the recurrent pathway {self.pathway:,} ({100 * self.share:.3f}%)"


def is_pathway_parameter(name: str) -> bool:
    return any(part.startswith("mem_") for part in name.split("."))


def parameter_counts(model_or_config: LRT | LRTConfig) -> ParameterCounts:
    """Total and pathway parameters; a config is instantiated on the meta device (no memory)."""
    model = model_or_config
    if isinstance(model, LRTConfig):
        model = LRT(model_or_config, device="meta")
    named = list(model.named_parameters())
    return ParameterCounts(
        total=sum(p.numel() for _, p in named),
        pathway=sum(p.numel() for n, p in named if is_pathway_parameter(n)),
    )
