"""siglip-dola: DoLa (Decoding by Contrasting Layers) for SigLIP vision transformers."""

from siglip_dola.compat import rerank_with_dola_siglip
from siglip_dola.dola import (
    DolaResult,
    apply_dola,
    build_probs_from_rep,
    contrast_and_mask,
    dola_from_distributions,
    jsd,
    select_early_exit,
)

__version__ = "0.1.0"

__all__ = [
    "DolaResult",
    "__version__",
    "build_probs_from_rep",
    "contrast_and_mask",
    "apply_dola",
    "dola_from_distributions",
    "jsd",
    "rerank_with_dola_siglip",
    "select_early_exit",
]
