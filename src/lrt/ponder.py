"""PonderLM-2 (arXiv 2509.23184), one of the paper's comparators, on LRT's backbone.

Before predicting the next token, each token emits K latent thoughts (`config.latent_thoughts`):
thought 1 is the final normed hidden state at the token, thought j+1 the one at thought j, and
the next token is predicted at the last thought. The computed sequence is therefore one of
*slots*, K + 1 per token (x_1 z_1 x_2 z_2 ... for K = 1): slot t(K+1) + j holds stage j of token t
(stage 0 the token itself), every slot of token t sits at token position t for RoPE, and slots
attend causally in slot order. A thought's slot takes the thought as its input vector in place of
the token embedding (both are normed; see the README for the choices the paper leaves open).

The exact computation is sequential, one slot after another (`exact`, what generation does). It
is trained in parallel as PonderLM-2 is: K passes that add one stage each give the thoughts a first
guess (the first over the tokens alone), then `iterations` Jacobi passes recompute every thought
from the previous guesses, and a final pass predicts the tokens. Gradients flow through every
pass. Each pass makes one more thought exact, in slot order (the first one sees no other), so
after K + n passes the first (K + n) // K tokens predict exactly, and K (T - 1) Jacobi passes
reproduce `exact`: the identity the tests check.
"""

from __future__ import annotations

import torch

from .attention import KVBuffer
from .schedules import Schedule, ScheduleOutput, Sequential, check_schedule_for


def slot_pass(model, idx: torch.Tensor, stages: list[torch.Tensor]) -> tuple[torch.Tensor, KVBuffer]:
    """One parallel pass over the layout of `stages` (each (B, T, d): the tokens' inputs, then
    thoughts): the final normed hidden state of every slot (B, T, stages, d), and its buffer."""
    B, T = idx.shape
    n = len(stages)
    pos = torch.arange(T * n, device=idx.device)
    buffer = KVBuffer(model.config.cache_layers, T * n, inplace=not torch.is_grad_enabled(), kept=True)
    h, _ = model.forward_positions(
        idx.repeat_interleave(n, dim=1),  # a thought's slot takes its token's value embeddings
        pos,
        None,
        buffer,
        full=True,
        span=range(T * n),
        inputs=torch.stack(stages, dim=2).flatten(1, 2),
        token_pos=pos // n,
    )
    return h.view(B, T, n, -1), buffer


def jacobi(
    model, idx: torch.Tensor, iterations: int | None, tol: float | None = None
) -> tuple[torch.Tensor, KVBuffer, int]:
    """PonderLM-2's parallel forward: (B, T, d) hidden states that predict each next token, the
    final pass's buffer, and the passes run. At most `iterations` Jacobi passes after the first
    guesses (None: K (T - 1), where the thoughts are exact: the fixed point), fewer where `tol` is
    given and the thoughts move by at most it."""
    K = model.config.latent_thoughts
    tokens = model.embed(idx)
    stages, passes = [tokens], 0
    for k in range(K):  # first guesses, one stage more each pass (the first pass reads the tokens alone)
        h, _ = slot_pass(model, idx, stages)
        stages, passes = [tokens] + [h[:, :, j] for j in range(k + 1)], passes + 1
    limit = iterations if iterations is not None else K * (idx.size(1) - 1)
    for _ in range(limit):
        h, _ = slot_pass(model, idx, stages)
        previous, stages, passes = stages, [tokens] + [h[:, :, j] for j in range(K)], passes + 1
        if tol is not None and max((a - b).abs().max() for a, b in zip(stages[1:], previous[1:])) <= tol:
            break
    h, buffer = slot_pass(model, idx, stages)
    return h[:, :, K], buffer, passes + 1


def exact(model, idx: torch.Tensor) -> tuple[torch.Tensor, KVBuffer, int]:
    """The true recurrence, one slot at a time: (B, T, d) hidden states predicting each next token,
    the buffer of every slot, and the forwards run (T (K + 1))."""
    B, T = idx.shape
    n = model.config.slots
    buffer = KVBuffer(model.config.cache_layers, T * n, inplace=not torch.is_grad_enabled(), kept=True)
    inputs, hidden = model.embed(idx), []
    for t in range(T):
        x = inputs[:, t : t + 1]
        for j in range(n):
            s = t * n + j
            x, _ = model.forward_positions(
                idx[:, t : t + 1],
                torch.tensor([s], device=idx.device),
                None,
                buffer,
                span=range(s, s + 1),
                inputs=x,
                token_pos=torch.tensor([t], device=idx.device),
            )
        hidden.append(x)
    return torch.cat(hidden, dim=1), buffer, T * n


def run(
    model,
    idx: torch.Tensor,
    schedule: Schedule,
    *,
    targets: torch.Tensor | None = None,
    return_logits: bool = True,
    tol: float | None = None,
    max_passes: int | None = None,
) -> tuple[ScheduleOutput, KVBuffer, int]:
    """`schedule` (Jacobi: training; Sequential: exact; Jacobi with `tol`: to the fixed point, in
    at most `max_passes` forwards, never fewer than the K first guesses and the final pass) as a
    ScheduleOutput of one pass over every position, with its buffer and forward count."""
    check_schedule_for(model.config, schedule)
    T = idx.size(1)
    if isinstance(schedule, Sequential):
        h, buffer, forwards = exact(model, idx)
    else:
        K = model.config.latent_thoughts
        if tol is None:
            iterations = schedule.iterations
        else:
            iterations = None if max_passes is None else max(0, max_passes - K - 1)
        h, buffer, forwards = jacobi(model, idx, iterations, tol)
    losses = []
    if targets is not None:  # the mean over counted targets, as run_schedule's
        nll = model.head_nll(h, targets)
        losses.append(nll / (targets != -1).sum().clamp(min=1))
    pos = torch.arange(T, device=idx.device)
    head = model.deferred_head(idx.device.type) if return_logits else None
    output = ScheduleOutput(losses[0] if losses else None, losses, [(pos, h)] if return_logits else [], T, head)
    return output, buffer, forwards
