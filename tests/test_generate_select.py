"""Best-of-N selection with a SigLIP scorer (final layer) and DoLa."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_janus import (
    SENTENCES,
    generate_argv,
    output_files,
    read_manifest,
    tiny_siglip_dir,
    write_prompts,
)
from PIL import Image

from siglip_dola.cli import main
from siglip_dola.dola import apply_dola
from siglip_dola.generate.select import CandidateScore, CandidateScorer, rank_candidates
from siglip_dola.models import load_model

PROMPTS = SENTENCES[:3]


def score(p: float, logit: float = 0.0, dola: float = 0.0) -> CandidateScore:
    return CandidateScore(siglip_logit=logit, siglip_p=p, dola_p=dola, contrast_layer=2)


def test_rank_candidates():
    scores = [score(0.2, 1.0, 0.5), score(0.7, 0.0, 0.1), score(0.2, 2.0, 0.5), score(0.1)]
    assert rank_candidates(scores, "first") == [0, 1, 2, 3]
    assert rank_candidates(scores, "siglip") == [1, 2, 0, 3]
    assert rank_candidates(scores, "dola") == [2, 0, 1, 3]  # ties fall to siglip_p, logit
    assert rank_candidates([score(0.5), score(0.5)], "siglip") == [0, 1]  # stable
    with pytest.raises(ValueError, match="no score"):
        rank_candidates([None, score(1.0)], "siglip")
    with pytest.raises(ValueError, match="unknown selection"):
        rank_candidates(scores, "best")


@pytest.fixture(scope="module")
def scorer_model():
    return load_model("hf:" + str(tiny_siglip_dir()))


def test_scores_match_an_independent_siglip_computation(scorer_model):
    from transformers import SiglipModel, SiglipTokenizer

    scorer = CandidateScorer(scorer_model, PROMPTS, layers="2,4", alpha=0.1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    got = scorer.score(images, PROMPTS[1], PROMPTS)
    assert scorer.classes(PROMPTS[1], PROMPTS) == [PROMPTS[1], PROMPTS[0], PROMPTS[2]]

    # the same numbers straight from transformers (final layer) and by hand (DoLa)
    folder = tiny_siglip_dir()
    model = SiglipModel.from_pretrained(folder).eval()
    tokenizer = SiglipTokenizer.from_pretrained(folder)
    texts = scorer.classes(PROMPTS[1], PROMPTS)
    batch = scorer_model.vision.preprocess([Image.fromarray(a) for a in images])
    with torch.no_grad():
        ids = tokenizer(
            texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt"
        )
        features = model.get_text_features(input_ids=ids.input_ids)
        features = getattr(features, "pooler_output", features)  # 5.x object, 4.x tensor
        text = torch.nn.functional.normalize(features, dim=-1)
        vision = model.vision_model
        hidden: dict[int, torch.Tensor] = {}  # block outputs by layer number, via hooks
        hooks = [
            vision.encoder.layers[layer - 1].register_forward_hook(
                lambda _m, _i, out, layer=layer: hidden.__setitem__(
                    layer, out[0] if isinstance(out, tuple) else out
                )
            )
            for layer in (2, 4, 6)
        ]
        vision(pixel_values=batch["pixel_values"])
        for hook in hooks:
            hook.remove()
        pooled = [vision.head(vision.post_layernorm(hidden[layer])) for layer in (2, 4, 6)]
        per_layer = torch.nn.functional.normalize(torch.stack(pooled), dim=-1)
        scale = model.logit_scale.exp()
    logits = per_layer @ text.T * scale
    q_final = logits[-1].softmax(-1)
    dola = apply_dola(logits, layers=(2, 4, 6), candidate_layers=(2, 4), alpha=0.1)
    for i, s in enumerate(got):
        assert s.siglip_logit == pytest.approx(float(logits[-1, i, 0]), abs=1e-4)
        assert s.siglip_p == pytest.approx(float(q_final[i, 0]), abs=1e-5)
        assert s.dola_p == pytest.approx(float(dola.p_hat[i, 0]), abs=1e-5)
        assert s.contrast_layer == int(dola.chosen_layers[i])


def test_scorer_rejects_bad_settings(scorer_model):
    with pytest.raises(ValueError, match="alpha"):
        CandidateScorer(scorer_model, PROMPTS, alpha=2.0)
    with pytest.raises(ValueError, match="valid contrast range 1..5"):
        CandidateScorer(scorer_model, PROMPTS, layers="6")


@pytest.mark.parametrize("mode", ["siglip", "dola"])
def test_cli_keeps_the_best_candidates(tmp_path, mode):
    prompts = write_prompts(tmp_path / "p.json", PROMPTS)
    # every candidate, in generation order
    assert (
        main(
            generate_argv(
                prompts, tmp_path / "all", None, "--parallel-size", "4", "--per-prompt", "4"
            )
        )
        == 0
    )
    candidates = output_files(tmp_path / "all")
    out = tmp_path / mode
    assert (
        main(
            generate_argv(
                prompts,
                out,
                None,
                "--parallel-size",
                "4",
                "--per-prompt",
                "2",
                "--select",
                mode,
                "--scorer",
                f"hf:{tiny_siglip_dir()}",
            )
        )
        == 0
    )
    kept = output_files(out)
    for record in read_manifest(out):
        scores = [CandidateScore(**c["scores"]) for c in record["candidates"]]
        assert len(scores) == 4
        best = rank_candidates(scores, mode)[:2]
        assert [record["candidates"][c]["file"] for c in best] == record["files"]
        for slot, candidate in enumerate(best):
            folder = record["dir"]
            # the kept image is that candidate's image, byte for byte
            assert (
                kept[f"{folder}/img_{slot:02d}.jpg"]
                == candidates[f"{folder}/img_{candidate:02d}.jpg"]
            )
        assert record["settings"]["select"] == mode


def test_cli_negatives_file_sets_the_candidate_classes(tmp_path):
    prompts = write_prompts(tmp_path / "p.json", PROMPTS[:1])
    negatives = tmp_path / "neg.txt"
    negatives.write_text("two dogs running on the beach\n\nan astronaut riding a horse\n")
    out = tmp_path / "out"
    assert (
        main(
            generate_argv(
                prompts,
                out,
                None,
                "--parallel-size",
                "2",
                "--select",
                "siglip",
                "--scorer",
                f"hf:{tiny_siglip_dir()}",
                "--negatives",
                str(negatives),
            )
        )
        == 0
    )
    record = read_manifest(out)[0]
    assert record["settings"]["negatives_sha1"] is not None
    # three classes: p < 1; without negatives a lone prompt would score p == 1
    assert all(0 < c["scores"]["siglip_p"] < 1 for c in record["candidates"])
