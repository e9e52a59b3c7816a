"""Every model poseguide loads, and the one place model references are understood.

* :mod:`~poseguide.models.hub`: a name -> a local folder (a folder, a built-in, a hub snapshot);
  the identity of a model folder (for caches).
* :mod:`~poseguide.models.sd`: the frozen SD1.5 parts (VAE, UNet, text encoder, tokenizer,
  noise scheduler).
* :mod:`~poseguide.models.controlnet`: ControlNet references (``unet``, ``previous``,
  ``stage:NAME``, ``originals``, folders, hub ids), the seeded untrained ControlNet, loading.
* :mod:`~poseguide.models.pipeline`: the diffusers pipeline built from parts.
* :mod:`~poseguide.models.tiny`: the built-in tiny SD, tiny CLIP and SD1.5-size random models,
  built from configs (``builtin:tiny-sd``, ``builtin:tiny-clip``, ``builtin:sd15-random``).
"""

from poseguide.models.controlnet import (
    ORIGINALS,
    PREVIOUS,
    STAGE_PREFIX,
    UNTRAINED,
    ControlNetRef,
    build_controlnet,
    load_controlnet,
    untrained_controlnet,
)
from poseguide.models.hub import (
    BUILTINS,
    SD15_RANDOM,
    TINY_CLIP,
    TINY_SD,
    ModelNotFoundError,
    model_identity,
    resolve_pretrained,
)
from poseguide.models.pipeline import (
    SCHEDULERS,
    check_controlnet,
    load_pipeline,
    make_scheduler,
    pipeline_from_parts,
)
from poseguide.models.sd import SDParts, encode_prompts, freeze, load_sd_parts, load_tokenizer

__all__ = [
    "BUILTINS", "ORIGINALS", "PREVIOUS", "SCHEDULERS", "SD15_RANDOM", "STAGE_PREFIX",
    "TINY_CLIP", "TINY_SD", "UNTRAINED", "ControlNetRef", "ModelNotFoundError", "SDParts",
    "build_controlnet", "check_controlnet", "encode_prompts", "freeze", "load_controlnet",
    "load_pipeline", "load_sd_parts", "load_tokenizer", "make_scheduler", "model_identity",
    "pipeline_from_parts", "resolve_pretrained", "untrained_controlnet",
]  # fmt: skip
