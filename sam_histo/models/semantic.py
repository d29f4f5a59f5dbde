"""Class-token head: dense class logits from SAM2's mask decoder without any prompt.

SAM-Path (Zhang et al. 2023, for SAM1) adds learnable class prompts to SAM's mask decoder so that it
outputs one mask per class. This head does the same for SAM2 with its own copies of the decoder's pieces:

- one learnable token per class, initialised from the decoder's single-mask output token (plus a little
  noise so the classes start apart), goes through a copy of the decoder's two-way transformer together with
  the image embedding (plus the prompt encoder's "no mask" dense embedding, as SAM adds when no mask is
  given);
- the transformed image tokens go through a copy of the decoder's upscaling path (with the high-resolution
  features at stride 4 and 8, as SAM2 does);
- a per-class copy of the decoder's first hypernetwork MLP turns each class token into weights that are
  dotted with the upscaled features: logits (B, C, 4h, 4w) at stride 4, plus a learnable per-class bias.

Copies, not shared modules: the prompted decoder keeps its weights (zero-shot and prompted use stay
intact) and no tensor is stored twice (safetensors refuses shared storage). Pure torch; the decoder and
prompt encoder objects are passed in, so this module never imports sam2.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ClassTokenHead(nn.Module):
    def __init__(
        self,
        transformer: nn.Module,
        upscaling: nn.Sequential,
        hyper_mlp: nn.Module,
        token_init: torch.Tensor,
        dense_init: torch.Tensor,
        num_classes: int,
        use_high_res: bool,
        token_noise: float = 0.02,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be at least 1")
        dim = token_init.numel()
        self.num_classes = num_classes
        self.use_high_res = use_high_res
        self.transformer = transformer
        self.upscaling = upscaling
        self.hypers = nn.ModuleList(copy.deepcopy(hyper_mlp) for _ in range(num_classes))
        tokens = token_init.detach().reshape(1, dim).repeat(num_classes, 1)
        self.class_tokens = nn.Parameter(tokens + token_noise * torch.randn_like(tokens))
        self.dense_embed = nn.Parameter(dense_init.detach().reshape(dim).clone())
        self.class_bias = nn.Parameter(torch.zeros(num_classes))

    @classmethod
    def from_decoder(cls, decoder: nn.Module, prompt_encoder: nn.Module, num_classes: int) -> "ClassTokenHead":
        """Copy the pieces of a SAM2 ``MaskDecoder`` / ``PromptEncoder`` (pretrained weights if loaded)."""
        return cls(
            transformer=copy.deepcopy(decoder.transformer),
            upscaling=copy.deepcopy(decoder.output_upscaling),
            hyper_mlp=decoder.output_hypernetworks_mlps[0],
            token_init=decoder.mask_tokens.weight[0],
            dense_init=prompt_encoder.no_mask_embed.weight[0],
            num_classes=num_classes,
            use_high_res=bool(decoder.use_high_res_features),
        )

    def forward(
        self, image_embed: torch.Tensor, high_res_feats: list[torch.Tensor], image_pe: torch.Tensor
    ) -> torch.Tensor:
        """image_embed (B, D, h, w) float; high_res_feats [(B, D/8, 4h, 4w), (B, D/4, 2h, 2w)] already
        projected by the decoder's conv_s0/conv_s1; image_pe (1, D, h, w). Returns logits (B, C, 4h, 4w)."""
        b, d, h, w = image_embed.shape
        src = image_embed + self.dense_embed.view(1, d, 1, 1)
        pos = image_pe.expand(b, -1, -1, -1)
        tokens = self.class_tokens.unsqueeze(0).expand(b, -1, -1)
        hs, keys = self.transformer(src, pos, tokens)
        src = keys.transpose(1, 2).reshape(b, d, h, w)
        if self.use_high_res:
            dc1, ln1, act1, dc2, act2 = self.upscaling
            feat_s0, feat_s1 = high_res_feats
            up = act1(ln1(dc1(src) + feat_s1))
            up = act2(dc2(up) + feat_s0)
        else:
            up = self.upscaling(src)
        weights = torch.stack([mlp(hs[:, c]) for c, mlp in enumerate(self.hypers)], dim=1)  # (B, C, D/8)
        _, c_up, uh, uw = up.shape
        logits = (weights @ up.reshape(b, c_up, uh * uw)).reshape(b, self.num_classes, uh, uw)
        return logits + self.class_bias.view(1, -1, 1, 1)
