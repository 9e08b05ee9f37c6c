"""What loader workers hand over: batched transforms equal per-image ones, skips stay
per image and in order, chunks bound the decoded pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from siglip_dola.data import ImageError
from siglip_dola.data.loading import load_batch


class _Scale:
    """A transform with a batched form; refuses images whose first pixel is 13."""

    def __init__(self, batched: bool) -> None:
        self.calls: list[int] = []
        if batched:
            self.batch = self._batch

    def __call__(self, image: Image.Image) -> dict[str, torch.Tensor]:
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)
        if pixels[0, 0, 0] == 13:
            raise ValueError("unlucky pixel")
        return {"pixel_values": pixels / 255}

    def _batch(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        self.calls.append(len(images))
        return {"pixel_values": torch.stack([self(im)["pixel_values"] for im in images])}


def _items(values: list[int | None]) -> list:
    def loader(value):
        def load():
            if value is None:
                raise ImageError("cannot identify image file")
            return Image.new("RGB", (4, 3), (value, value, value))

        return load

    return [(10 + i, f"img{i}", loader(v)) for i, v in enumerate(values)]


@pytest.mark.parametrize("max_pixels", [1, 25, 10_000])
def test_batched_and_one_at_a_time_agree(max_pixels):
    values = [1, None, 13, 40, 50, 13, 60, None]
    plain = load_batch(_items(values), _Scale(batched=False))
    transform = _Scale(batched=True)
    batched = load_batch(_items(values), transform, max_pixels=max_pixels)
    assert plain[0] == batched[0] == [10, 13, 14, 16]
    assert torch.equal(plain[1]["pixel_values"], batched[1]["pixel_values"])
    reasons = [(s.source, s.reason) for _, s in batched[2]]
    assert reasons == [(s.source, s.reason) for _, s in plain[2]]
    assert [p for p, _ in batched[2]] == [11, 12, 15, 17]
    assert [source for source, _ in reasons] == ["img1", "img2", "img5", "img7"]  # in order
    assert "unlucky pixel" in reasons[1][1] and "cannot identify" in reasons[0][1]
    assert sum(transform.calls) >= 4  # batched calls happened (a failing chunk: per image)
    if max_pixels == 10_000:
        assert transform.calls[0] == 6  # one call for the decoded six ...


def test_chunks_bound_the_decoded_pixels():
    transform = _Scale(batched=True)
    positions, batch, skipped = load_batch(_items([1, 2, 3, 4, 5]), transform, max_pixels=24)
    assert transform.calls == [2, 2, 1]  # 12 pixels per image, a chunk closes at 24
    assert positions == [10, 11, 12, 13, 14] and not skipped
    assert batch["pixel_values"].shape == (5, 3, 3, 4)


def test_nothing_usable_gives_no_batch():
    positions, batch, skipped = load_batch(_items([None, 13]), _Scale(batched=True))
    assert positions == [] and batch is None and len(skipped) == 2
