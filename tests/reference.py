"""An independent, deliberately naive LRT: LRT_SPEC sections 1-3 written as loops over sequences,
positions, layers and heads, in float64. It shares no code with the package; the tests compare
the package's fast paths against it."""

import math

import torch


def rmsnorm(x):
    eps = torch.finfo(x.dtype).eps
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rope(x, t, base):
    """x (heads, head_dim) at position t: rotate channel pairs (j, j + D/2) by t * base^(-2j/D)."""
    D = x.shape[-1]
    half = D // 2
    out = torch.empty_like(x)
    for j in range(half):
        angle = t * base ** (-2 * j / D)
        c, s = math.cos(angle), math.sin(angle)
        a, b = x[:, j], x[:, j + half]
        out[:, j] = a * c + b * s
        out[:, j + half] = b * c - a * s
    return out


def reference_logits(model, idx, memory=True):
    """Logits (B, T, V) of the exact recurrence; memory=False holds m at 0."""
    cfg = model.config
    P = {k: v.detach().double() for k, v in model.state_dict().items()}
    H, Hkv, D, d, L = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.n_embd, cfg.n_layer
    c = cfg.gate_channels
    targets = set(range(L)) if cfg.target_layers is None else {l - 1 for l in cfg.target_layers}
    if cfg.injection == "none":
        targets = set()
    windows = []
    for l in range(L):
        full = l == L - 1 or cfg.window_pattern[l % len(cfg.window_pattern)] == "L"
        windows.append(None if full else (cfg.short_window or cfg.sequence_len // 2))
    S, stack = cfg.latent_thoughts + 1, L * cfg.loops
    out = torch.zeros(idx.shape[0], idx.shape[1], cfg.vocab_size, dtype=torch.float64)
    for b in range(idx.shape[0]):
        keys = [[] for _ in range(stack)]
        values = [[] for _ in range(stack)]
        m = torch.zeros(d, dtype=torch.float64)
        for t in range(idx.shape[1]):
            tok = int(idx[b, t])
            if cfg.reset_memory_at_bos and tok == cfg.bos_id:
                m = torch.zeros(d, dtype=torch.float64)  # memory does not cross into a new document
            x = rmsnorm(P["wte.weight"][tok])
            for j in range(S):  # PonderLM-2: the token, then each thought fed the previous slot's output
                s = t * S + j  # the slot's place in the sequence; RoPE sees the token position t
                if j:
                    x = rmsnorm(x)
                x0 = x
                for i in range(stack):  # a looped transformer runs the layers `loops` times
                    l = i % L
                    pre = f"blocks.{l}."
                    if cfg.residual_scalars:
                        x = P[pre + "resid_scale"] * x + P[pre + "x0_scale"] * x0
                    if l in targets and "residual" in cfg.injection:
                        x = x + P[pre + "mem_scale"] * m
                    h = rmsnorm(x)
                    q = (P[pre + "attn.c_q.weight"] @ h).view(H, D)
                    k = (P[pre + "attn.c_k.weight"] @ h).view(Hkv, D)
                    v = (P[pre + "attn.c_v.weight"] @ h).view(Hkv, D)
                    if f"value_embeds.{l}.weight" in P:
                        gate = 2 * torch.sigmoid(P[pre + "attn.ve_gate.weight"] @ h[:c])
                        v = v + gate[:, None] * P[f"value_embeds.{l}.weight"][tok].view(Hkv, D)
                    if l in targets and "kv" in cfg.injection:
                        gates = 2 * torch.sigmoid(P[pre + "attn.mem_gate.weight"] @ h[:c])
                        g_own, g_mem = gates[:Hkv], gates[Hkv:]
                        W = P["mem_kv.weight"] if cfg.projection == "shared" else P[pre + "attn.mem_kv.weight"]
                        kv_mem = (W @ m).view(2 * Hkv, D)
                        k = g_own[:, None] * k + g_mem[:, None] * kv_mem[:Hkv]
                        v = g_own[:, None] * v + g_mem[:, None] * kv_mem[Hkv:]
                    q, k = rmsnorm(rope(q, t, cfg.rope_base)), rmsnorm(rope(k, t, cfg.rope_base))
                    keys[i].append(k)
                    values[i].append(v)
                    first = 0 if windows[l] is None else max(0, s - windows[l] * S)
                    y = torch.zeros(H, D, dtype=torch.float64)
                    for head in range(H):
                        g = head // (H // Hkv)
                        scores = torch.stack([q[head] @ keys[i][u][g] for u in range(first, s + 1)]) / math.sqrt(D)
                        p = torch.softmax(scores, 0)
                        y[head] = sum(p[n] * values[i][u][g] for n, u in enumerate(range(first, s + 1)))
                    x = x + P[pre + "attn.c_proj.weight"] @ y.flatten()
                    x = x + P[pre + "mlp.c_proj.weight"] @ torch.relu(P[pre + "mlp.c_fc.weight"] @ rmsnorm(x)).square()
                    if l + 1 == cfg.source_layer:
                        source = x
            x = rmsnorm(x)  # the last slot's
            if cfg.source_layer == L:
                source = x
            logits = P["lm_head.weight"] @ x
            if cfg.logit_softcap:
                logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
            out[b, t] = logits
            if memory:
                m = rmsnorm(source)
    return out
