"""Per-layer readout of SigLIP image towers, one adapter module per model family.

``base`` defines the interface; ``hf``, ``open_clip``, ``timm_vit`` and ``janus`` implement
it (import them directly: each pulls in its own library). ``siglip_dola.models.load_model``
picks the adapter from a model spec.
"""

from siglip_dola.readout.base import Batch, LayerEmbeddings, LoadedModel, TextEncoder, VisionReadout

__all__ = ["Batch", "LayerEmbeddings", "LoadedModel", "TextEncoder", "VisionReadout"]
