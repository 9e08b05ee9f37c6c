"""Best-of-N: score generated candidates against their prompt with SigLIP (and DoLa).

Each candidate image is read out at the final layer and at the DoLa candidate layers in one
backbone pass. The classes are the prompt plus the negatives (by default the file's other
prompts), so a candidate scores high when SigLIP finds it matches its own prompt better than
the others. Scores per candidate:

* ``siglip_logit``: s_N(prompt) = cos(z_N, t_prompt) / tau;
* ``siglip_p``: q_N(prompt), the final-layer softmax over the classes;
* ``dola_p``: DoLa's p_hat(prompt) (dynamic contrast layer, APC with ``alpha``);
* ``contrast_layer``: the layer DoLa contrasted with.

``--select siglip`` ranks by (siglip_p, siglip_logit), ``--select dola`` by (dola_p,
siglip_p, siglip_logit): the later keys break ties (one prompt and no negatives gives
every candidate p = 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

from siglip_dola.data import ImageSet
from siglip_dola.dola import class_scores
from siglip_dola.embeddings import extract_layer_embeddings
from siglip_dola.layers import default_candidates, parse_layers, validate_candidates
from siglip_dola.readout.base import LoadedModel
from siglip_dola.settings import RunSettings
from siglip_dola.variants import Variant

__all__ = ["SELECT_MODES", "CandidateScore", "CandidateScorer", "rank_candidates"]

SELECT_MODES = ("first", "siglip", "dola")
BATCH_SIZE = 64  # texts / images per scorer forward pass


@dataclass(frozen=True)
class CandidateScore:
    """How well one candidate image matches its prompt (see the module docstring)."""

    siglip_logit: float
    siglip_p: float
    dola_p: float
    contrast_layer: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def rank_candidates(scores: Sequence[CandidateScore | None], mode: str) -> list[int]:
    """Candidate indices, best first; ``first`` keeps generation order. Sorting is stable,
    so equal scores keep the lower candidate number first."""
    if mode not in SELECT_MODES:
        raise ValueError(f"unknown selection {mode!r}; expected one of {', '.join(SELECT_MODES)}")
    order = list(range(len(scores)))
    if mode == "first":
        return order

    def key(i: int) -> tuple[float, ...]:
        s = scores[i]
        if s is None:
            raise ValueError(f"candidate {i} has no score")
        if mode == "siglip":
            return (s.siglip_p, s.siglip_logit)
        return (s.dola_p, s.siglip_p, s.siglip_logit)

    return sorted(order, key=key, reverse=True)


class CandidateScorer:
    """Scores candidate images against their prompt with a loaded SigLIP readout."""

    def __init__(
        self,
        model: LoadedModel,
        texts: Sequence[str],
        layers: str | Sequence[int] | None = None,
        alpha: float = 0.1,
        settings: RunSettings | None = None,
    ) -> None:
        """``texts``: every prompt and negative that will be scored (encoded once here).
        ``layers``: DoLa candidate layers (``18,20,22``, ``bucket:3``...; default: the even
        layers of the last of three buckets). ``settings``: how candidates are read (default:
        in-process batches of 64, no cache; the readout moves them to the model's device)."""
        if model.text is None:
            raise ValueError(
                f"the scorer {model.vision.name!r} has no text tower; pass --scorer-text"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.model = model
        self.settings = settings or RunSettings(batch_size=BATCH_SIZE, progress=False)
        self.alpha = float(alpha)
        self.tau = model.tau
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        self.candidate_layers = self._candidate_layers(layers)
        self.variant = Variant.dynamic(self.candidate_layers, self.alpha)
        self._rows = {text: i for i, text in enumerate(dict.fromkeys(texts))}
        self._bank = self._encode(list(self._rows))

    def _candidate_layers(self, layers: str | Sequence[int] | None) -> tuple[int, ...]:
        depth = self.model.vision.depth
        if layers is None:
            return default_candidates(depth)
        if isinstance(layers, str):
            return parse_layers(layers, depth)
        return validate_candidates(tuple(int(x) for x in layers), depth)

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        rows = [
            self.model.text.encode_text(texts[i : i + BATCH_SIZE]).float().cpu()
            for i in range(0, len(texts), BATCH_SIZE)
        ]
        bank = torch.cat(rows)
        if not torch.isfinite(bank).all():
            raise ValueError("the scorer's text tower produced NaN or inf embeddings")
        return torch.nn.functional.normalize(bank, dim=-1)

    def classes(self, prompt: str, negatives: Sequence[str]) -> list[str]:
        """The prompt first, then the distinct negatives other than the prompt."""
        return [prompt, *(t for t in dict.fromkeys(negatives) if t != prompt)]

    @torch.no_grad()
    def score(
        self, images: Sequence[Image.Image] | np.ndarray, prompt: str, negatives: Sequence[str]
    ) -> list[CandidateScore]:
        """Scores of each candidate image (RGB PIL images or uint8 [N, H, W, 3])."""
        if isinstance(images, np.ndarray):
            images = [Image.fromarray(a) for a in images]
        classes = self.classes(prompt, negatives)
        missing = [t for t in classes if t not in self._rows]
        if missing:
            raise KeyError(f"texts not encoded by the scorer: {missing[:3]}")
        bank = self._bank[[self._rows[t] for t in classes]]
        candidates = ImageSet(
            "candidates",
            ("prompt",),
            [np.asarray(image.convert("RGB")) for image in images],
            np.zeros(len(images), dtype=np.int64),
        )
        emb = extract_layer_embeddings(
            self.model.vision, candidates, self.candidate_layers, self.settings
        )
        if len(emb.indices) != len(images):
            raise ValueError(f"the scorer could not read candidate(s): {emb.skipped[:3]}")
        scores = class_scores(torch.as_tensor(emb.embeddings), bank, self.tau, normalize=True)
        final = scores[-1]  # layers are ascending and end with N
        q_final = torch.softmax(final, dim=-1)
        dola = self.variant.score(scores, emb.layers)
        return [
            CandidateScore(
                siglip_logit=float(final[i, 0]),
                siglip_p=float(q_final[i, 0]),
                dola_p=float(dola.probs[i, 0]),
                contrast_layer=int(dola.chosen_layers[i]),
            )
            for i in range(final.shape[0])
        ]
