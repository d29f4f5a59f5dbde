"""Which parameter belongs to which part of a SAM2 model, and which parts train.

Pure: takes any ``nn.Module`` (a ``SamHisto`` with ``.sam`` or a bare ``SAM2Base``) and reads names and the
model's own ``image_encoder.trunk.stage_ends``; it never imports sam2.

Groups (``param_group``):
- ``0 .. n-1``: Hiera stages of the trunk. ``patch_embed``, ``pos_embed`` and ``pos_embed_window`` belong to
  stage 0; block ``i`` belongs to the first stage whose end is >= i (hiera_t: stage_ends [0, 2, 9, 11]).
- ``"neck"``: the FPN neck and ``no_mem_embed`` (added to the image embedding), i.e. everything that makes
  the image features besides the trunk. It trains whenever any trunk stage trains and is frozen when the
  whole trunk is, so "frozen encoder" means the image features are fixed (and could be cached), as in
  SAM2's own frozen-encoder recipe.
- ``"decoder"``: the SAM mask decoder. Its ``conv_s0``/``conv_s1`` project the high-resolution features
  inside ``forward_image`` and so serve the semantic head as well.
- ``"semantic_head"``: the class-token head (semantic mode).
- ``"prompt_encoder"``: the SAM prompt encoder.
- ``"lora"``: LoRA adapter factors (models/lora.py); they train in every phase whose stages are not
  "none" ("lora" names a phase where only they train on the encoder side), and the base weights they sit
  on (``*.base_layer.*``) never train.
- ``"memory"``: video-only modules (memory attention and encoder, object pointers, temporal encodings);
  always frozen for image training.
"""
from __future__ import annotations

import re
from typing import Optional, Sequence, Union

from torch import nn

Stages = Union[str, Sequence[int]]  # "all", "none" or stage ids

MEMORY_PREFIXES = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "no_obj_embed_spatial", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.",
)
_STAGE0 = ("image_encoder.trunk.patch_embed.", "image_encoder.trunk.pos_embed")
_BLOCK = re.compile(r"^image_encoder\.trunk\.blocks\.(\d+)\.")
# Parameters that are embeddings or positions, not weights to shrink (timm and BEiT exclude the same kind).
_NO_DECAY = re.compile(r"(pos_embed|_token|tokens|point_embed|no_mask_embed|no_mem_|tpos_enc|no_obj_|dense_embed)")


def sam_core(model: nn.Module) -> tuple[nn.Module, str]:
    """(the SAM2Base inside ``model``, the name prefix of its parameters in ``model``)."""
    if hasattr(model, "sam") and hasattr(model.sam, "image_encoder"):
        return model.sam, "sam."
    if hasattr(model, "image_encoder"):
        return model, ""
    raise TypeError(f"{type(model).__name__} is not a SAM2 model (no image_encoder, no .sam)")


def stage_ends(model: nn.Module) -> list[int]:
    """Index of the last block of each Hiera stage, from the model itself."""
    core, _ = sam_core(model)
    return list(core.image_encoder.trunk.stage_ends)


def _trunk_block(name: str) -> Optional[int]:
    """-1 for the patch and position embeddings, i for a parameter of trunk block i, None otherwise
    (``name`` relative to the SAM2Base or with the ``sam.`` prefix)."""
    if name.startswith("sam."):
        name = name[len("sam."):]
    if name.startswith(_STAGE0):
        return -1
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def param_group(name: str, ends: Sequence[int]) -> Union[int, str]:
    """Group of one parameter, by its name relative to the SAM2Base (or with ``sam.`` / ``semantic_head.``)."""
    if ".lora_A." in name or ".lora_B." in name:
        return "lora"
    if name.startswith("semantic_head."):
        return "semantic_head"
    block = _trunk_block(name)
    if name.startswith("sam."):
        name = name[len("sam."):]
    if block == -1:
        return 0
    if block is not None:
        for stage, end in enumerate(ends):
            if block <= end:
                return stage
        raise ValueError(f"{name}: block {block} is past the last stage end {ends[-1]}")
    if name.startswith("image_encoder.") or name.startswith("no_mem_embed"):
        return "neck"
    if name.startswith("sam_mask_decoder."):
        return "decoder"
    if name.startswith("sam_prompt_encoder."):
        return "prompt_encoder"
    if name.startswith(MEMORY_PREFIXES):
        return "memory"
    raise ValueError(f"parameter {name!r} belongs to no known group; update sam_histo/models/stages.py")


def group_map(model: nn.Module) -> dict[str, Union[int, str]]:
    """Every named parameter of ``model`` -> its group (each parameter exactly once)."""
    ends = stage_ends(model)
    return {name: param_group(name, ends) for name, _ in model.named_parameters()}


def normalize_stages(stages: Stages, n_stages: int) -> list[int]:
    """'all' / 'none' / ids -> sorted list of stage ids; bad ids raise ValueError naming the valid range."""
    if isinstance(stages, str):
        if stages == "all":
            return list(range(n_stages))
        if stages in ("none", "lora"):  # "lora": adapters only, no whole stage
            return []
        raise ValueError(f"stages={stages!r}: use 'all', 'none', 'lora' or a list of ids in 0..{n_stages - 1}")
    ids = sorted(set(int(s) for s in stages))
    bad = [s for s in ids if not 0 <= s < n_stages]
    if bad:
        raise ValueError(f"stages {bad} do not exist: this model has stages 0..{n_stages - 1}")
    return ids


def _wanted(group, stage_ids: list[int], decoder: bool, prompt_encoder: bool, mode: str, name: str) -> bool:
    if isinstance(group, int):
        return group in stage_ids
    if group == "neck":
        return bool(stage_ids)
    if group == "semantic_head":
        return decoder and mode == "semantic"
    if group == "decoder":
        # Semantic mode uses only the decoder's high-resolution projections (inside forward_image); the
        # rest would get no gradient, which DDP reports as unused parameters.
        return decoder and (mode == "prompted" or ".conv_s0." in name or ".conv_s1." in name)
    if group == "prompt_encoder":
        return prompt_encoder and mode == "prompted"
    return False  # memory


def set_trainable(
    model: nn.Module,
    stages: Stages,
    *,
    train_decoder: bool = True,
    train_prompt_encoder: bool = True,
    mode: str = "prompted",
) -> dict[Union[int, str], tuple[int, int]]:
    """Set ``requires_grad`` on every parameter for one unfreeze phase; idempotent. Returns trainable_counts."""
    if mode not in ("prompted", "semantic"):
        raise ValueError(f"mode={mode!r}: use 'prompted' or 'semantic'")
    ends = stage_ends(model)
    ids = normalize_stages(stages, len(ends))
    for name, p in model.named_parameters():
        group = param_group(name, ends)
        if group == "lora":
            p.requires_grad_(stages != "none")
        elif ".base_layer." in name:  # the weights a LoRA adapter sits on never train
            p.requires_grad_(False)
        else:
            p.requires_grad_(_wanted(group, ids, train_decoder, train_prompt_encoder, mode, name))
    return trainable_counts(model)


def set_trainable_stages(model: nn.Module, stages: Stages) -> dict[Union[int, str], tuple[int, int]]:
    """Only the encoder side: trunk stages in ``stages`` (and the neck with any of them) train, the other
    stages and the neck do not; heads keep their current flags, memory stays frozen. Idempotent."""
    ends = stage_ends(model)
    ids = normalize_stages(stages, len(ends))
    for name, p in model.named_parameters():
        group = param_group(name, ends)
        if isinstance(group, int) or group == "neck":
            p.requires_grad_(_wanted(group, ids, False, False, "prompted", name))
        elif group == "memory":
            p.requires_grad_(False)
    return trainable_counts(model)


def trainable_counts(model: nn.Module) -> dict[Union[int, str], tuple[int, int]]:
    """group -> (trainable parameters, all parameters), stages first in order."""
    ends = stage_ends(model)
    counts: dict = {i: [0, 0] for i in range(len(ends))}
    for name, p in model.named_parameters():
        c = counts.setdefault(param_group(name, ends), [0, 0])
        c[1] += p.numel()
        if p.requires_grad:
            c[0] += p.numel()
    return {k: (v[0], v[1]) for k, v in counts.items()}


def num_layers(model: nn.Module) -> int:
    """Number of Hiera blocks (the depth layer-wise LR decay counts over)."""
    return stage_ends(model)[-1] + 1


def layer_id(name: str, n_blocks: int) -> int:
    """Layer-wise LR decay id: 0 for patch/position embeddings, i+1 for trunk block i, n_blocks+1 for
    everything after the trunk (neck, heads). Same numbering as Hiera.get_layer_id in sam2 (BEiT's rule)."""
    block = _trunk_block(name)
    return n_blocks + 1 if block is None else block + 1


def layer_ids(model: nn.Module) -> dict[str, int]:
    n = num_layers(model)
    return {name: layer_id(name, n) for name, _ in model.named_parameters()}


def no_weight_decay(name: str, param) -> bool:
    """True for biases, norm scales (any 0-/1-D tensor) and embedding/position tables."""
    return param.ndim <= 1 or name.endswith(".bias") or bool(_NO_DECAY.search(name))

