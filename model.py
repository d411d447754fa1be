"""
The FlexMDM network: a bidirectional DiT (Peebles & Xie) with adaLN-zero time conditioning,
rotary positions and FlexAttention, with two heads (paper section 3, Prop. 1):
- the unmasking posterior f(x, t)[j]: logits over the vocabulary at every position j;
- the insertion expectation g(x, t)[j] >= 0 (softplus) for every gap j.

Gap slots. A sequence of length n has n+1 gaps: gap j sits just before token j, gap n after the
last token. The model reads gap j from the hidden state at position j; for gap n it appends one
extra *slot* token (id vocab_size, an embedding row of its own) after the sequence. So a FlexMDM
sequence of n tokens occupies n+1 positions, f is read at 0..n-1 and g at 0..n.
The MDM baseline (model_type="mdm") has no insertion head and no slot.

Layout. The network always sees rows of tokens [R, T] with, per token, the id of the sequence it
belongs to (seq_ids, -1 for padding) and its position inside that sequence. A padded batch is
one sequence per row (DiT.padded_layout); a packed batch puts several sequences in a row (pack).
Attention is restricted to tokens of the same sequence, so both layouts compute the same function.

The losses (interpolant.py) and the sampler (sampler.py) call the network through a function of the
sequences: network() for training, DiT.sampler_fn for sampling.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from configurator import InputError, check_choices, check_ranges

_compiled_flex = None


def compiled_flex_attention():
    """FlexAttention compiled once, on first use (compiling at import would cost every script seconds).
    Packing (train.pack) gives a new row count now and then and each compiles once, in seconds. Past
    dynamo's default of 8 shapes it would run the unfused reference flex_attention instead: very slow.
    A plain global, not functools.cache: under compile=True dynamo traces through a cache wrapper
    (re-running this body, with a warning), but reads a global as it is."""
    global _compiled_flex
    if _compiled_flex is None:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


@dataclass
class ModelConfig:
    vocab_size: int  # data tokens incl. mask/pad/sep; FlexMDM adds one internal slot id
    max_len: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    cond_dim: int = 128
    dropout: float = 0.0
    model_type: str = "flexmdm"  # flexmdm | mdm
    pad_id: int = 0
    attention: str = "auto"  # auto (flex on CUDA, sdpa elsewhere) | flex | sdpa
    fixed_embedding: bool = False  # add a learned vector to fixed tokens (subgoals, prompts); RESULTS.md: no gain
    gap_embedding: bool = False  # FlexMDM: add a learned vector at the gaps a task closed (infilling; see DiT.forward)
    insert_head: str = "linear"  # g's head on the final adaLN output: linear (one zero-initialised layer) | mlp
    # (Linear, GELU, Linear: the published code's length head); g = insert_scale * softplus(head)
    insert_scale: float = 1.0  # g = insert_scale * softplus(head); the published code uses max_len


    def __post_init__(self):
        check_choices(vars(self), dict(model_type=("flexmdm", "mdm"), insert_head=("linear", "mlp"),
                                       attention=("auto", "flex", "sdpa")))
        check_ranges(vars(self), dict(vocab_size=">0", max_len=">0", n_layer=">0", n_head=">0", n_embd=">0",
                                      cond_dim=">0", dropout="[0,1)", insert_scale=">0"))
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise InputError(f"n_embd={self.n_embd} must be n_head={self.n_head} times an even head size (rotary "
                             "positions rotate pairs of dimensions)")


def rotary(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def attend(q, k, v, mask):
    """FlexAttention with a BlockMask, or SDPA with a dense boolean mask. FlexAttention always runs
    compiled (a fused kernel on CUDA, a C++ one on CPU): the eager flex_attention is a slow reference
    (8x slower than compiled on CPU at the demo's shape, BENCHMARKS.md). On CPU, torch (2.13) has no
    FlexAttention backward, compiled or not: train there with SDPA (attention="auto")."""
    if isinstance(mask, BlockMask):
        return compiled_flex_attention()(q, k, v, block_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of the conditioning time (alpha(t), footnote 2) followed by an MLP."""

    def __init__(self, cond_dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, t):
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = 1000 * t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.norm1 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(approximate="tanh"),
                                 nn.Linear(4 * cfg.n_embd, cfg.n_embd))
        self.ada = nn.Linear(cfg.cond_dim, 6 * cfg.n_embd)  # adaLN-zero: zero-initialised
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cond, seq_index, rope, mask):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(cond)[seq_index].chunk(6, dim=-1)
        R, T, D = x.shape
        q, k, v = self.qkv(modulate(self.norm1(x), shift1, scale1)).view(R, T, 3, self.n_head, -1).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        q, k = rotary(q, *rope), rotary(k, *rope)
        y = attend(q, k, v, mask).transpose(1, 2).reshape(R, T, D)
        x = x + gate1 * self.dropout(self.proj(y))
        return x + gate2 * self.dropout(self.mlp(modulate(self.norm2(x), shift2, scale2)))


class DiT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.slot_id = cfg.vocab_size if cfg.model_type == "flexmdm" else None
        self.tok_emb = nn.Embedding(cfg.vocab_size + (cfg.model_type == "flexmdm"), cfg.n_embd)
        self.time_emb = TimeEmbedding(cfg.cond_dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_out = nn.LayerNorm(cfg.n_embd, elementwise_affine=False)
        self.ada_out = nn.Linear(cfg.cond_dim, 2 * cfg.n_embd)
        self.unmask_head = nn.Linear(cfg.n_embd, cfg.vocab_size)
        self.insert_head = None
        if cfg.model_type == "flexmdm":  # the mlp is the published FlexMDM code's length head (on our adaLN output)
            self.insert_head = nn.Linear(cfg.n_embd, 1) if cfg.insert_head == "linear" else nn.Sequential(
                nn.Linear(cfg.n_embd, cfg.n_embd), nn.GELU(approximate="tanh"), nn.Linear(cfg.n_embd, 1))
        self.apply(self._init_weights)
        g_out = [self.insert_head if cfg.insert_head == "linear" else self.insert_head[-1]] if self.insert_head else []
        for zero in [b.ada for b in self.blocks] + [self.ada_out, self.unmask_head] + g_out:
            nn.init.zeros_(zero.weight)
            nn.init.zeros_(zero.bias)
        # Fixed tokens (maze subgoals) carry the same ids as generated ones: without this vector the
        # network cannot tell a subgoal from an unmasked cell. Zero at init and created last (no RNG
        # drawn), so with the option off, or on at init, the model is exactly the one without it.
        self.fixed_emb = nn.Parameter(torch.zeros(cfg.n_embd)) if cfg.fixed_embedding else None
        # The same for the gaps a task keeps empty (forward: why), FlexMDM only.
        flex_gaps = cfg.gap_embedding and self.slot_id is not None
        self.closed_emb = nn.Parameter(torch.zeros(cfg.n_embd)) if flex_gaps else None

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def use_flex(self, device):
        return self.cfg.attention == "flex" or (self.cfg.attention == "auto" and device.type == "cuda")

    def attention_mask(self, seq_ids):
        """Each token attends to the tokens of its own sequence; a padding token only to itself
        (it keeps a finite output that nobody reads). Built once per batch, shared by all layers.
        A padding token's key is -1 - its column, unique in its row, so one comparison does both."""
        R, T = seq_ids.shape
        key = torch.where(seq_ids >= 0, seq_ids, -1 - torch.arange(T, device=seq_ids.device))
        if self.use_flex(seq_ids.device):
            def same_sequence(b, h, q, kv):
                return key[b, q] == key[b, kv]
            return create_block_mask(same_sequence, R, None, T, T, device=seq_ids.device)
        return (key[:, :, None] == key[:, None, :])[:, None]

    def rope(self, positions):
        head_dim = self.cfg.n_embd // self.cfg.n_head
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)
        angles = positions.float()[:, None, :, None] * inv_freq  # [R, 1, T, head_dim/2]
        return angles.cos(), angles.sin()

    def forward(self, tokens, seq_ids, positions, cond_time, mask=None, fixed=None, closed=None):
        """tokens, seq_ids, positions: [R, T]; cond_time: [S], the conditioning time alpha(t) of
        each sequence; mask: attention_mask(seq_ids), built here if not given; fixed: [R, T] bool,
        the fixed tokens (None: none), read only with fixed_embedding; closed: [R, T] bool, the
        positions that carry a gap the task closed (None: none), read only with gap_embedding.
        Returns the final hidden states [R, T, n_embd]; apply the heads to them.

        Why closed gaps are an input: an infilling task (a prefix and a suffix fixed, one gap open) looks
        at t = 0 like any fixed text, so without the mark the minimiser of eq. 7 at each gap is the span's
        expected length times the chance that the cut is there, spread over every gap, while the sampler
        opens only the true one (RESULTS.md, infilling). Given the mark, the minimiser is the posterior
        mean of the gaps given (x_t, the closed gaps) (Prop. 1 with the task as part of the state)."""
        mask = self.attention_mask(seq_ids) if mask is None else mask
        cond = F.silu(self.time_emb(cond_time))
        seq_index = seq_ids.clamp_min(0)
        rope = self.rope(positions)
        x = self.tok_emb(tokens)
        if self.fixed_emb is not None and fixed is not None:
            x = x + fixed[..., None] * self.fixed_emb
        if self.closed_emb is not None and closed is not None:
            x = x + closed[..., None] * self.closed_emb
        for block in self.blocks:
            x = block(x, cond, seq_index, rope, mask)
        shift, scale = self.ada_out(cond)[seq_index].chunk(2, dim=-1)
        return modulate(self.norm_out(x), shift, scale)

    def insertion_rates(self, h):
        return self.cfg.insert_scale * F.softplus(self.insert_head(h).squeeze(-1).float())

    def padded_layout(self, x):
        """The layout of a right-padded batch x [B, L]: FlexMDM appends the slot after each
        sequence (length = number of non-pad tokens); the MDM reads pads as ordinary tokens."""
        B, L = x.shape
        pos = torch.arange(L + (self.slot_id is not None), device=x.device).expand(B, -1)
        rows = torch.arange(B, device=x.device)[:, None]
        if self.slot_id is None:
            return x, rows.expand(B, L), pos
        lengths = (x != self.cfg.pad_id).sum(1, keepdim=True)
        tokens = torch.cat([x, torch.full_like(x[:, :1], self.cfg.pad_id)], dim=1)
        tokens = torch.where(pos == lengths, self.slot_id, tokens)
        return tokens, torch.where(pos <= lengths, rows, -1), pos

    def padded_states(self, x, cond_time, fixed=None, closed=None):
        """x [B, L] right-padded with pad_id, cond_time [B], fixed [B, L] bool or None, closed [B, L+1] bool
        (FlexMDM: the closed gaps) or None -> (the final hidden states at the tokens [B, L, n_embd], g [B, L+1]
        for FlexMDM or None for the MDM)."""
        if fixed is not None and self.slot_id is not None:
            fixed = torch.cat([fixed, torch.zeros_like(fixed[:, :1])], dim=1)  # the gap slot is not fixed
        h = self(*self.padded_layout(x), cond_time, fixed=fixed, closed=closed)
        return h[:, : x.shape[1]], (self.insertion_rates(h) if self.insert_head is not None else None)

    def forward_padded(self, x, cond_time, fixed=None, closed=None):
        """The sampler's model function of dense logits (sampler.py): (logits [B, L, V], g [B, L+1] or None)."""
        h, g = self.padded_states(x, cond_time, fixed, closed)
        return self.unmask_head(h).float(), g

    def sampler_fn(self, alpha):
        """model_fn(x, t, fixed, closed) for sample.generate: conditions the network on alpha(t) and returns f as
        a function of where it is read, f_at(where [B, L] bool) -> logits [where.sum(), V]. The sampler
        reads f only at the masks it unmasks (vanilla decides which before reading f), and at V = 50k
        the head costs more than the whole network."""
        def model_fn(x, t, fixed, closed):
            h, g = self.padded_states(x, alpha(t), fixed, closed)
            return (lambda where: self.unmask_head(h[where]).float()), g
        return model_fn



def autocast(device, dtype):
    """The one precision context of every script: bf16 autocast on the device's type, or none (float32)."""
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()


# ----------------------------------------------------------------------------------------------
# Packing: the FlexMDM states of a batch in rows with no padding between sequences

def scatter_rows(where, values, fill, shape):
    """A tensor of shape, fill except at the flat indices where [B, n] >= 0, which get values [B, n].
    The entries with where = -1 go to a spare last element that is dropped: no boolean indexing,
    whose data-dependent size would make the host wait for the device."""
    size = math.prod(shape)
    dest = torch.where(where >= 0, where, size).flatten()
    out = torch.full((size + 1,), fill, dtype=values.dtype, device=values.device)
    return out.index_put_((dest,), values.flatten())[:size].view(shape)


def next_fit(span, row_tokens):
    """Next-fit of sequences of span[i] <= row_tokens positions into rows, in order, as tensor ops:
    returns each sequence's row and column. A row opened at sequence i holds i..nxt(i)-1, as many
    as fit; the rows open at 0, nxt(0), nxt(nxt(0)), ... This orbit is found by pointer doubling:
    after k rounds `opens` holds its first 2^k members and `jump` is nxt applied 2^k times."""
    B = span.shape[0]
    ends = torch.cumsum(span, 0)
    begins = ends - span
    nxt = torch.searchsorted(ends, begins + row_tokens, right=True)  # first k with ends[k] > begins[i] + T
    jump = torch.cat([nxt, nxt.new_full((1,), B)])  # B: past the last sequence, a fixed point
    opens = torch.zeros(B + 1, dtype=torch.long, device=span.device)
    opens[0] = 1
    for _ in range((B - 1).bit_length()):  # 2^k >= B >= the number of rows
        opens = opens.index_add(0, jump, opens).clamp_max_(1)
        jump = jump[jump]
    opens = opens[:B]
    first = torch.cummax(opens * torch.arange(B, device=span.device), 0).values  # the row's first sequence
    return torch.cumsum(opens, 0) - 1, begins - begins[first]


def pack(xt, lengths, slot_id, pad_id, row_tokens):
    """Pack the FlexMDM states x_t [B, L] (each followed by its gap slot) into rows of row_tokens,
    next-fit, with no padding between sequences. Returns tokens, seq_ids, positions [R, row_tokens]
    and where [B, L+1]: the flat index in the rows of (sequence b, position j), -1 past the slot.
    One host sync: the row count R."""
    B, L = xt.shape
    row, col = next_fit(lengths + 1, row_tokens)
    shape = (int(row[-1]) + 1, row_tokens)
    j = torch.arange(L + 1, device=xt.device)
    where = torch.where(j <= lengths[:, None], (row * row_tokens + col)[:, None] + j, -1)
    seq_tokens = torch.cat([xt, torch.full_like(xt[:, :1], pad_id)], dim=1)
    seq_tokens = torch.where(j == lengths[:, None], slot_id, seq_tokens)
    seq_ids = torch.arange(B, device=xt.device)[:, None].expand(B, L + 1)
    return (scatter_rows(where, seq_tokens, pad_id, shape), scatter_rows(where, seq_ids, -1, shape),
            scatter_rows(where, j.expand(B, -1), 0, shape), where)


def network(model, row_tokens=0):
    """The DiT as the losses call it (interpolant.flexmdm_loss, mdm_loss):
    net(xt [B, L], lengths [B] or None (the MDM: every position is a token), cond_time [B], fixed [B, L],
    at (rows, positions): where f is read, closed [B, L+1] or None: the gaps the task closed) -> (logits
    [len(rows), V], g [B, L+1], 0 past each row's last gap, or None for the MDM). model is the DiT or its
    wrapper (torch.compile, DDP), whose forward is the one that runs; row_tokens > 0 runs a FlexMDM on the
    packed layout, 0 on the padded one: the same function."""
    raw = model.module if hasattr(model, "module") else model

    def net(xt, lengths, cond_time, fixed, at, closed=None):
        if lengths is None:
            tokens, seq_ids, positions = raw.padded_layout(xt)
            h = model(tokens, seq_ids, positions, cond_time, raw.attention_mask(seq_ids), fixed)
            return raw.unmask_head(h[at]), None
        if row_tokens:
            tokens, seq_ids, positions, where = pack(xt, lengths, raw.slot_id, raw.cfg.pad_id, row_tokens)
        else:
            tokens, seq_ids, positions = raw.padded_layout(xt)
            where = torch.arange(tokens.numel(), device=xt.device).view(tokens.shape)
            where = torch.where(seq_ids >= 0, where, -1)
        fixed_rows = None
        if raw.fixed_emb is not None:  # the fixed flags of x_t, in the rows' layout
            fixed_rows = scatter_rows(where[:, :xt.shape[1]], fixed, False, tokens.shape)
        closed_rows = None
        if raw.closed_emb is not None and closed is not None:  # gap j's flag on its carrier, token j or the slot
            closed_rows = scatter_rows(where, closed, False, tokens.shape)
        h = model(tokens, seq_ids, positions, cond_time, raw.attention_mask(seq_ids), fixed_rows, closed_rows)
        h = h.flatten(0, 1)
        # g at every position of the rows (a cheap head), read at each gap slot
        g = torch.where(where >= 0, raw.insertion_rates(h)[where.clamp_min(0)], 0.0)
        return raw.unmask_head(h[where[at]]), g
    return net
