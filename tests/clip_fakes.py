"""Hand-made CLIP encoders with known embeddings, for the CLIP tests (no network, no weights)."""
import zlib

import numpy as np
import torch

from sam_histo.models.clip import ClipModel

COLOUR_WORDS = {"red": 0, "crimson": 0, "green": 1, "olive": 1, "blue": 2, "navy": 2}


class ColourClip(ClipModel):
    """Image embedding = mean RGB of the crop minus mid-grey (plus a small constant 4th entry); text
    embedding = the one-hot colour of the first colour word in the text, plus a small text-dependent jitter.
    Counts text-encoder calls and texts."""

    def __init__(self, name="colour-clip", image_size=16):
        super().__init__(name, image_size, 4, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), logit_scale=50.0)
        self.text_calls = 0
        self.texts_seen = 0
        self.image_calls = 0

    def _image_features(self, pixels):
        self.image_calls += 1
        rgb = pixels.mean(dim=(2, 3)) * 0.5  # back to [0, 1] units, minus 0.5
        return torch.cat([rgb, torch.full((len(rgb), 1), 0.05)], dim=1)

    def _text_features(self, texts):
        self.text_calls += 1
        self.texts_seen += len(texts)
        out = torch.zeros(len(texts), 4)
        for i, t in enumerate(texts):
            words = [w.strip(".,") for w in t.lower().split()]
            hit = next((COLOUR_WORDS[w] for w in words if w in COLOUR_WORDS), None)
            if hit is not None:
                out[i, hit] = 1.0
            rng = np.random.default_rng(zlib.crc32(t.encode()))
            out[i] += torch.from_numpy(rng.normal(0, 0.05, 4)).float()
        return out


class TableClip(ClipModel):
    """Text embedding of each text = a fixed random vector with a random norm (so normalising each prompt
    before averaging matters)."""

    def __init__(self, dim=8, name="table-clip"):
        super().__init__(name, 16, dim)
        self.table = {}
        self.rng = np.random.default_rng(1)

    def vector(self, text):
        if text not in self.table:
            self.table[text] = self.rng.normal(size=self.embed_dim) * self.rng.uniform(0.1, 10)
        return self.table[text]

    def _text_features(self, texts):
        return torch.tensor(np.stack([self.vector(t) for t in texts]), dtype=torch.float32)
