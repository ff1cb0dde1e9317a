"""GPT: a small decoder-only transformer language model (the GPT-2 layout, as written in nanoGPT).

Token ids in (N, L), next-token logits out (N, L, vocab); ``num_classes`` is the vocabulary size. Each
block's output (N, L, d_model) is a feature stage (``blocks.<i>``); ``lm_head:input`` (the ``embedding``
feature) is the final normalised hidden state, per token, not pooled.

Sizes (parameters at vocab 256, context 256; the tied ``lm_head`` counts once; head dim 32 or 64):

============  =======  ======  =====  ==========
name          d_model  layers  heads  parameters
============  =======  ======  =====  ==========
gpt_nano      64       2       2      132,864
gpt_micro     96       3       3      384,864
gpt_mini      128      4       4      858,880
gpt_small     256      4       4      3,290,624
gpt_medium    384      6       6      10,844,160
============  =======  ======  =====  ==========

Formula: ``vocab*d + context*d + layers*((4 + 2*mlp_ratio)*d^2 + (9 + mlp_ratio)*d) + 2*d``
(:func:`gpt_parameter_count`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distillab.models.base import MODELS, FeatureStage, ZooModel

KVCache = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values, each (N, heads, S, head_dim)

INIT_STD = 0.02  # GPT-2's initialisation of every weight matrix and embedding


def check_generation(length: int, max_new_tokens: int, context: int, greedy: bool, temperature: float) -> None:
    """Refuse (ValueError) a generation that would outgrow the model's context or sample at a temperature <= 0."""
    if length + max_new_tokens > context:
        raise ValueError(f"a prompt of {length} tokens plus {max_new_tokens} new ones exceeds the model's "
                         f"context of {context}: generate at most {context - length} tokens or shorten the prompt")
    if not greedy and temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature} (the most likely token: greedy=True)")


def causal_mask(queries: int, keys: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(queries, keys) boolean mask, True where attention is allowed. The queries are the *last* ``queries``
    positions of the ``keys`` (bottom-right aligned), as when new tokens follow cached ones; SDPA's own
    ``is_causal`` aligns top-left, which is right only when queries and keys are the same positions."""
    return torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)


def padding_layout(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (N, L) and the boolean attention mask (N, 1, L, L) for rows with padding (mask 0).

    A real token's position counts the real tokens before it, so a left-padded row is embedded exactly as
    the same row unpadded (padding takes position 0). A query attends to real keys at or before it; a
    padding query also sees itself, so that no row of the mask is empty (an empty row gives NaN, which
    would then reach the real tokens through the padding's keys and values).
    """
    real = attention_mask.bool()
    positions = (real.long().cumsum(1) - 1).clamp(min=0)
    length = real.shape[1]
    allowed = causal_mask(length, length, real.device) & real[:, None, None, :]
    return positions, allowed | torch.eye(length, dtype=torch.bool, device=real.device)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention`` (nanoGPT's ``c_attn`` /
    ``c_proj`` names: one projection to queries, keys and values, one output projection)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, past: KVCache | None = None,
                cache: bool = False) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """x (N, L, d) -> (N, L, d); with ``cache``, also the keys and values of ``past`` plus these L tokens.

        attn_mask: boolean (N or 1, 1, L, S), True where allowed; None: causal. past: the cached keys and
        values of the tokens before x (S = past length + L).
        """
        n, length, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(n, length, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
            if attn_mask is None and length > 1:
                attn_mask = causal_mask(length, k.shape[2], x.device)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=attn_mask is None and length > 1,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(n, length, d)))
        return (y, (k, v)) if cache else y


class MLP(nn.Module):
    """Linear to ``mlp_ratio * d``, GELU (exact, as nanoGPT; GPT-2 used the tanh approximation), linear back."""

    def __init__(self, d_model: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, mlp_ratio * d_model)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(mlp_ratio * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block (GPT-2): x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, past: KVCache | None = None,
                cache: bool = False) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """As :meth:`CausalSelfAttention.forward`: the new hidden state, and with ``cache`` the layer's keys and
        values (a feature tap on the block reads the hidden state either way)."""
        if cache:
            attended, kv = self.attn(self.ln_1(x), attn_mask, past, cache=True)
        else:
            attended, kv = self.attn(self.ln_1(x), attn_mask, past), None
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return (x, kv) if cache else x


class GPT(ZooModel):
    """Decoder-only transformer language model (GPT-2 / nanoGPT): token and learned position embeddings,
    ``n_layers`` pre-norm blocks, final LayerNorm ``ln_f``, bias-free ``lm_head`` tied to the token embedding.

    num_classes: vocabulary size. context: the longest sequence (positions embedded). mlp_ratio: the MLP's
    hidden width over d_model. dropout: on embeddings, attention weights and residual branches (0: none).
    """

    def __init__(self, num_classes: int, context: int = 256, d_model: int = 128, n_layers: int = 4,
                 n_heads: int = 4, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if context < 1 or n_layers < 1:
            raise ValueError(f"context and n_layers must be positive, got {context} and {n_layers}")
        self.wte = nn.Embedding(num_classes, d_model)
        self.wpe = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, num_classes, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as GPT-2 and nanoGPT
        self._init_weights(n_layers)

        self.context = context
        self.num_classes = num_classes
        self.input_shape = (context,)
        self.embedding_dim = d_model
        self.head = "lm_head"
        self.feature_info = [FeatureStage(f"blocks.{i}", d_model, 1) for i in range(n_layers)]

    def _init_weights(self, n_layers: int) -> None:
        """GPT-2: weights and embeddings N(0, 0.02), biases 0, LayerNorm 1/0; the projections that write into
        the residual stream (``c_proj``) N(0, 0.02/sqrt(2 * n_layers)), two per block (nanoGPT)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, INIT_STD)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, INIT_STD / math.sqrt(2 * n_layers))

    def _check(self, ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise TypeError(f"GPT reads token ids, an integer tensor (N, L); got {ids.dtype} {tuple(ids.shape)}")
        if ids.shape[1] > self.context:
            raise ValueError(f"a sequence of {ids.shape[1]} tokens is longer than the model's context of "
                             f"{self.context}: use a shorter data block (at most {self.context} tokens) or a model "
                             f"with a larger context (option context={ids.shape[1]} or more)")
        if attention_mask is not None and attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the ids' shape "
                             f"{tuple(ids.shape)}")

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.drop(self.wte(ids) + self.wpe(positions))

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids (N, L) -> logits (N, L, vocab); position t sees tokens 0..t only.

        attention_mask: (N, L) of 1 (token) / 0 (padding), for left-padded batches; a real token's logits are
        then those of its row unpadded. Padding positions get logits too, which mean nothing.
        """
        self._check(ids, attention_mask)
        if attention_mask is None:
            mask, x = None, self._embed(ids, torch.arange(ids.shape[1], device=ids.device))
        else:
            positions, mask = padding_layout(attention_mask)
            x = self._embed(ids, positions)
        for block in self.blocks:
            x = block(x, mask)
        return self.lm_head(self.ln_f(x))

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, greedy: bool = False,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 attention_mask: torch.Tensor | None = None, eos_id: int | None = None) -> torch.Tensor:
        """Continue every row of ``ids`` (N, L) by ``max_new_tokens`` tokens: (N, L + max_new_tokens).

        The prompt is run once, then each new token is run alone against the cached keys and values of the
        tokens before it. greedy: take the most likely token; else sample (``torch.multinomial`` with
        ``generator``) from softmax(logits / temperature), restricted to the ``top_k`` most likely tokens when
        given. attention_mask: (N, L) 1/0 for left-padded prompts. eos_id: a row that produced it emits
        eos_id from then on. Dropout is not switched off here: call ``eval()`` first, as with nanoGPT.
        """
        self._check(ids, attention_mask)
        n, length = ids.shape
        check_generation(length, max_new_tokens, self.context, greedy, temperature)
        if attention_mask is None:
            real, mask, positions = None, None, torch.arange(length, device=ids.device).expand(n, length)
        else:
            real = attention_mask.bool()
            positions, mask = padding_layout(attention_mask)
        x, past = self._embed(ids, positions), []
        for block in self.blocks:
            x, kv = block(x, mask, cache=True)
            past.append(kv)
        position = positions[:, -1:] + 1  # (N, 1): the next token's position
        finished = torch.zeros(n, dtype=torch.bool, device=ids.device)
        out = [ids]
        for step in range(max_new_tokens):
            token = self._next_token(self.lm_head(self.ln_f(x[:, -1])), temperature, greedy, top_k, generator)
            if eos_id is not None:
                token = token.masked_fill(finished, eos_id)
                finished |= token == eos_id
            out.append(token[:, None])
            if step == max_new_tokens - 1 or bool(finished.all()):
                break
            if real is not None:  # the new token is real; it attends to every real token before it
                real = torch.cat((real, real.new_ones(n, 1)), dim=1)
                mask = real[:, None, None, :]
            x = self._embed(token[:, None], position)
            for i, block in enumerate(self.blocks):
                x, past[i] = block(x, mask, past[i], cache=True)
            position = position + 1
        result = torch.cat(out, dim=1)
        missing = length + max_new_tokens - result.shape[1]  # every row stopped at eos_id early
        return F.pad(result, (0, missing), value=eos_id) if missing else result

    @staticmethod
    def _next_token(logits: torch.Tensor, temperature: float, greedy: bool, top_k: int | None,
                    generator: torch.Generator | None) -> torch.Tensor:
        """(N, vocab) logits -> (N,) token ids."""
        if greedy:
            return logits.argmax(dim=-1)
        logits = logits.float() / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)


def gpt_parameter_count(vocab: int, context: int, d_model: int, n_layers: int, mlp_ratio: int = 4) -> int:
    """Parameters of a :class:`GPT` (the tied lm_head counted once): embeddings, blocks (two LayerNorms,
    attention in/out projections, MLP in/out, all with biases), final LayerNorm."""
    block = (4 + 2 * mlp_ratio) * d_model ** 2 + (9 + mlp_ratio) * d_model
    return (vocab + context) * d_model + n_layers * block + 2 * d_model


def _describe(d_model: int, n_layers: int, n_heads: int) -> str:
    params = gpt_parameter_count(256, 256, d_model, n_layers)
    return (f"GPT language model (decoder-only transformer): d_model {d_model}, {n_layers} layers, {n_heads} heads; "
            f"{params:,} parameters at vocab 256, context 256")


# task "lm": language models, for language-modelling data sets only (the run plan checks the pair). Their
# model_kind stays "classifier": they are built with num_classes (the vocabulary), read a batch field, are evaluated.
@MODELS.register("gpt_nano", description=_describe(64, 2, 2), task="lm")
def gpt_nano(num_classes: int, context: int = 256, dropout: float = 0.0, d_model: int = 64, n_layers: int = 2,
             n_heads: int = 2) -> GPT:
    return GPT(num_classes, context, d_model, n_layers, n_heads, dropout=dropout)


@MODELS.register("gpt_micro", description=_describe(96, 3, 3), task="lm")
def gpt_micro(num_classes: int, context: int = 256, dropout: float = 0.0, d_model: int = 96, n_layers: int = 3,
              n_heads: int = 3) -> GPT:
    return GPT(num_classes, context, d_model, n_layers, n_heads, dropout=dropout)


@MODELS.register("gpt_mini", description=_describe(128, 4, 4), task="lm")
def gpt_mini(num_classes: int, context: int = 256, dropout: float = 0.0, d_model: int = 128, n_layers: int = 4,
             n_heads: int = 4) -> GPT:
    return GPT(num_classes, context, d_model, n_layers, n_heads, dropout=dropout)


@MODELS.register("gpt_small", description=_describe(256, 4, 4), task="lm")
def gpt_small(num_classes: int, context: int = 256, dropout: float = 0.0, d_model: int = 256, n_layers: int = 4,
              n_heads: int = 4) -> GPT:
    return GPT(num_classes, context, d_model, n_layers, n_heads, dropout=dropout)


@MODELS.register("gpt_medium", description=_describe(384, 6, 6), task="lm")
def gpt_medium(num_classes: int, context: int = 256, dropout: float = 0.0, d_model: int = 384, n_layers: int = 6,
               n_heads: int = 6) -> GPT:
    return GPT(num_classes, context, d_model, n_layers, n_heads, dropout=dropout)
