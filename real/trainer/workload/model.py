"""A GPT-style decoder over bytes.

Pre-norm transformer blocks (causal self-attention, then a 4x GELU MLP), learned position
embeddings and an output projection tied to the token embedding, as in GPT-2. With the tied
head the parameter count is ``layers * (12 h^2 + 13 h) + (vocab + context) * h + 2 h``, the
formula ``shared.scenario.ModelConfig.parameter_count`` uses: 4 layers x 128 wide is ~0.85M
parameters, 8 x 448 about 19.5M.

Weights start from N(0, 0.02) (biases zero, layer norms one), the GPT-2 initialisation; the
initialisation draws from a private generator seeded by the caller, so the same seed gives the
same weights whatever else used the global generator before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02


@dataclass(frozen=True)
class GPTConfig:
    """Shape of the decoder.

    Attributes:
        layers: transformer blocks.
        hidden: model width; ``heads`` must divide it.
        heads: attention heads.
        context: longest sequence, tokens.
        vocab_size: tokens (256 for the byte tokenizer).
    """

    layers: int = 4
    hidden: int = 128
    heads: int = 4
    context: int = 64
    vocab_size: int = 256

    def __post_init__(self) -> None:
        for name in ("layers", "hidden", "heads", "context", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GPTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"GPTConfig.heads ({self.heads}) must divide hidden ({self.hidden})")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.proj = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        shape = (batch, length, self.heads, width // self.heads)
        q, k, v = (t.view(shape).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out: torch.Tensor = self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return out


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.hidden)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.hidden)
        self.fc = nn.Linear(config.hidden, 4 * config.hidden)
        self.out = nn.Linear(4 * config.hidden, config.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.out(F.gelu(self.fc(self.ln2(x))))
        return out


class GPT(nn.Module):
    """The decoder; ``forward(tokens, targets)`` returns the mean cross-entropy loss.

    Args:
        config: the shape.
        seed: seed of the initial weights.
    """

    def __init__(self, config: GPTConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden)
        self.pos_emb = nn.Embedding(config.context, config.hidden)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.hidden)
        self._initialise(seed)

    @torch.no_grad()
    def _initialise(self, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for name, parameter in self.named_parameters():
            if name.endswith("bias"):
                parameter.zero_()
            elif ".ln" in name or name.startswith("ln_"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * INIT_STD)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[batch, length, vocab]``, or the mean loss when ``targets`` are given."""
        length = tokens.shape[1]
        if length > self.config.context:
            raise ValueError(
                f"sequence of {length} tokens exceeds the context {self.config.context}"
            )
        positions = torch.arange(length, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        for block in self.blocks:
            x = block(x)
        # The output projection is tied to the token embedding (GPT-2); using the weight here
        # rather than a second module keeps one entry in the state dict.
        logits = F.linear(self.ln_f(x), self.tok_emb.weight)
        if targets is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def parameter_count(model: nn.Module) -> int:
    """Parameters of ``model`` (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())
