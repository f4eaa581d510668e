"""Train an open_clip CLIP from scratch on a subset under a fixed budget of samples seen (paper §4):
a smaller subset is seen for more epochs, so methods are compared at equal compute.

The model shape is data: `model_configs/*.json` are registered with open_clip; any open_clip config
name, e.g. `ViT-B-16` (the paper's), works on a GPU. The default `TADS-Tiny-RN` (a width-16 ResNet image
tower at 32 px, a 2-layer text transformer with a 16-token context) trains at ~900 samples/s on 2 CPU
cores. It was chosen by measurement on the demo pool (README "Baselines, training and the benchmark"):
ViT towers from scratch stayed at chance on zero-shot classification even after 150k samples seen,
while the convolutional tower learns the garment classes within 20-40k; the short context keeps the
from-scratch text tower from memorising the item numbers and prices at the end of web captions.

The loop is separate from the model and the data: images are decoded and preprocessed once into a
tensor cache at the model's input size, captions tokenized once. Seeded and deterministic on CPU;
bfloat16 autocast on CUDA. Checkpoints are safetensors with their config beside them. `export_subset`
writes a subset as WebDataset shards plus an open_clip CSV, for open_clip's own distributed trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tads_assets.core.io.formats import decode_rgb, safe_file_stem
import tads_assets  # noqa: F401  (torchvision shim)
from tads_assets.core.io.storage import staged_dir
from tads_assets.core.atomic import write_json_atomic

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
# train_clip may run in several threads at once (trained_clip: one CPU training per core); the model's random
# initialisation, seeded through torch's global generator, must not interleave
_INIT_LOCK = threading.Lock()
DEFAULT_MODEL = "TADS-Tiny-RN"


@dataclass
class TrainParams:
    """Defaults of CLIP training (the Dagster Config class takes its defaults from here)."""

    model: str = DEFAULT_MODEL
    budget_samples_seen: int = 30_000  # ~40 s on 2 CPU cores with the default model
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    seed: int = 0


def create_model(name: str = DEFAULT_MODEL, device: str = "cpu", config_file: Path | None = None):
    """(model, image preprocess, tokenizer) of an open_clip config with random weights (nothing downloaded).
    `config_file` (a checkpoint's stored config) takes precedence over a registered config of the same name."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    if config_file is not None:
        open_clip.add_model_config(config_file)
    if open_clip.get_model_config(name) is None:
        raise ValueError(f"unknown CLIP model config {name!r}: use one of TADS's ({', '.join(p.stem for p in sorted(MODEL_CONFIG_DIR.glob('*.json')))}) "
                         f"or an open_clip config name such as ViT-B-16 (open_clip.list_models())")
    with _quiet_open_clip():  # "No pretrained weights loaded": random init is the point here
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device=device)
        return model, preprocess, open_clip.get_tokenizer(name)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs through the root logger (config lookups, tokenizer parsing, missing weights): errors only."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def get_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer `create_model(name)` returns, without building the model."""
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    with _quiet_open_clip():
        return open_clip.get_tokenizer(name)


def preprocess_images(blobs: Sequence[bytes], preprocess, progress: Callable[[str], None] = log.info) -> torch.Tensor:
    """Decode and preprocess every image once (float32 at the model's input size: 48 KiB per image at 64 px)."""
    out, t0, last = [], time.perf_counter(), time.perf_counter()
    for i, blob in enumerate(blobs):
        x = preprocess(decode_rgb(blob))  # normalised float tensor
        out.append(x)
        if time.perf_counter() - last > 5:
            last = time.perf_counter()
            progress(f"clip_train: preprocessed {i + 1}/{len(blobs)} images ({time.perf_counter() - t0:.0f}s)")
    return torch.stack(out) if out else torch.zeros(0)


@dataclass
class TrainResult:
    model: torch.nn.Module
    loss_per_step: list[float]
    steps: int
    epochs: float  # samples seen / subset size
    samples_seen: int  # steps × batch: the same for every subset of at least one batch
    seconds: float
    samples_per_s: float


def preprocess_cached(uids: Sequence[str], blobs: Sequence[bytes], preprocess, cache: dict,
                      progress: Callable[[str], None] = log.info) -> torch.Tensor:
    """`preprocess_images` through `cache` (uid -> preprocessed tensor): images another subset of the same run already
    preprocessed are not decoded again (the methods' subsets of one pool overlap). The cache must belong to one
    `preprocess` (one model config)."""
    todo = [i for i, u in enumerate(uids) if u not in cache]
    if todo:
        for i, x in zip(todo, preprocess_images([blobs[i] for i in todo], preprocess, progress)):
            cache[uids[i]] = x
    return torch.stack([cache[u] for u in uids])


def train_clip(blobs: Sequence[bytes], captions: Sequence[str], params: TrainParams, device: str = "cpu",
               progress: Callable[[str], None] = log.info, model_bundle=None, uids: Sequence[str] | None = None,
               image_cache: dict | None = None) -> TrainResult:
    """CLIP contrastive training from scratch for ceil(budget / batch) steps over the subset. `uids` and
    `image_cache`: reuse images preprocessed for an earlier subset (`preprocess_cached`)."""
    if len(blobs) != len(captions) or len(blobs) < 2:
        raise ValueError(f"need at least 2 image-caption pairs, got {len(blobs)} images and {len(captions)} captions")
    with _INIT_LOCK:  # the initialisation draws from torch's global generator: one seeded model at a time
        torch.manual_seed(params.seed)
        model, preprocess, tokenizer = model_bundle or create_model(params.model, device)
    images = (preprocess_images(blobs, preprocess, progress) if image_cache is None or uids is None
              else preprocess_cached(list(uids), blobs, preprocess, image_cache, progress))
    return train_on_tensors(model, images, tokenizer(list(captions)), params, device, progress)


class _CompactVocabulary:
    """Train a text tower's token embedding on only the rows the subset's captions use.

    With a dense embedding gradient, AdamW reads and writes every row of the table each step (TADS-Tiny-RN: 49,408 x
    128 = 6.3M entries, most of its parameters), though a subset's captions use a few thousand tokens. AdamW is
    elementwise: a row whose gradient is zero at every step keeps zero moments, so its only change is the decoupled
    weight decay, p <- p (1 - lr_t wd) per step. Training a compact table of the used rows (tokens remapped into it)
    and applying that product of factors to the other rows afterwards gives the dense run's weights: the used rows
    bit for bit (the same values, gradients and elementwise updates), the unused ones up to float rounding
    (tests/core/test_clip_train.py). Models without an `nn.Embedding` `token_embedding`, or subsets that use most of
    the vocabulary, train as they are."""

    def __init__(self, model: torch.nn.Module, tokens: torch.Tensor):
        self.model, self.full = model, getattr(model, "token_embedding", None)
        self.used = torch.unique(tokens) if isinstance(self.full, torch.nn.Embedding) and tokens.numel() else None
        if self.used is not None and len(self.used) > self.full.num_embeddings // 2:
            self.used = None
        self.tokens = tokens
        if self.used is not None:
            remap = torch.zeros(self.full.num_embeddings, dtype=tokens.dtype)
            remap[self.used] = torch.arange(len(self.used), dtype=tokens.dtype)
            self.tokens = remap[tokens]
            weight = self.full.weight
            compact = torch.nn.Embedding(len(self.used), self.full.embedding_dim, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                compact.weight.copy_(weight[self.used.to(weight.device)])
            model.token_embedding = compact

    def restore(self, factor: float) -> None:
        """Put the full table back: the trained rows, and the others decayed by `factor`, the product of every
        step's (1 - lr_t wd)."""
        if self.used is None:
            return
        compact = self.model.token_embedding
        with torch.no_grad():
            self.full.weight.mul_(factor)
            self.full.weight[self.used.to(self.full.weight.device)] = compact.weight
        self.model.token_embedding = self.full


def train_on_tensors(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, params: TrainParams,
                     device: str = "cpu", progress: Callable[[str], None] = log.info,
                     compact_vocabulary: bool = True, channels_last: bool = True) -> TrainResult:
    """The training loop over preprocessed images and tokenized captions (row i of each is pair i): batches
    drawn from a fresh seeded permutation each epoch, AdamW with warmup and cosine decay, exactly
    ceil(budget / batch) steps, so every subset is trained for the same number of samples seen.
    `compact_vocabulary`: update only the token-embedding rows the captions use (`_CompactVocabulary`: the same
    weights; a 25 MiB gradient less per step, which in a worker thread's malloc arena was mapped and page-faulted
    anew every step: 2,700 -> 370 page faults per step). `channels_last`: the image tower's convolutions in
    channels-last layout (the same model to float rounding). TADS-Tiny-RN on 2 CPU cores, median of 3:
    793 samples/s with neither, 801 compact, 883 channels-last, 918 with both; two 1-thread trainings at once
    in threads (trained_clip): 577-623 -> 642-715 samples/s each."""
    import open_clip

    n = len(images)
    if n != len(tokens) or n < 2:
        raise ValueError(f"need at least 2 image-caption pairs, got {n} images and {len(tokens)} captions")
    gen = torch.Generator().manual_seed(params.seed)
    bs = min(params.batch_size, n)
    steps = max(1, math.ceil(params.budget_samples_seen / bs))
    vocabulary = _CompactVocabulary(model, tokens) if compact_vocabulary else None
    if vocabulary is not None:
        tokens = vocabulary.tokens
    # channels-last convolutions (oneDNN's native layout on CPU, tensor cores' on CUDA): measured 1.5x the forward and
    # backward of TADS-Tiny-RN's image tower on 1 CPU thread (115 -> 73-82 ms per batch of 128)
    visual = getattr(model, "visual", None) if channels_last else None
    memory_format = torch.channels_last if visual is not None else torch.contiguous_format
    if visual is not None:
        visual.to(memory_format=torch.channels_last)
    # fused: one kernel per step for every tensor (torch's CPU and CUDA fused AdamW); measured 1.3x the step rate of the
    # per-tensor loop for TADS-Tiny-RN on 2 cores (its 6.3M-entry token embedding is most of the update), the same
    # loss to 6 digits
    opt = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay,
                            fused=device.split(":")[0] in ("cpu", "cuda") or None)
    warm = min(params.warmup_steps, steps // 2)

    def lr_at(step: int) -> float:
        if step < warm:
            return params.lr * (step + 1) / warm
        return 0.5 * params.lr * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    loss_fn = open_clip.ClipLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    model.train()
    order = torch.randperm(n, generator=gen)
    pos, history = 0, []
    t0 = last = time.perf_counter()
    for step in range(steps):
        if pos + bs > n:  # next epoch: a fresh permutation
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos : pos + bs]
        pos += bs
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        with autocast:
            img = model.encode_image(images[idx].to(device, memory_format=memory_format), normalize=True)
            txt = model.encode_text(tokens[idx].to(device), normalize=True)
            loss = loss_fn(img, txt, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        history.append(float(loss.item()))
        if time.perf_counter() - last > 5 or step == steps - 1:
            last = time.perf_counter()
            done = (step + 1) * bs
            progress(f"clip_train: step {step + 1}/{steps}, loss {history[-1]:.4f}, "
                     f"{done / (time.perf_counter() - t0):.0f} samples/s")
    if vocabulary is not None:
        vocabulary.restore(math.prod(1.0 - lr_at(step) * params.weight_decay for step in range(steps)))
    if visual is not None:
        visual.to(memory_format=torch.contiguous_format)
    model.eval()
    seconds = time.perf_counter() - t0
    return TrainResult(model, history, steps, steps * bs / n, steps * bs, seconds, steps * bs / max(seconds, 1e-9))


CHECKPOINT = "model.safetensors"
INFO = "train_info.json"


def smooth(values: Sequence[float], window: int = 10) -> list[float]:
    """Trailing moving average (for plotting a noisy per-step loss)."""
    v = np.asarray(values, np.float64)
    if len(v) == 0:
        return []
    c = np.cumsum(np.r_[0.0, v])
    lo = np.maximum(np.arange(1, len(v) + 1) - window, 0)
    return list((c[1:] - c[lo]) / (np.arange(1, len(v) + 1) - lo))


def training_key(selection_digest: str, device: str, **recipe) -> str:
    """A content key of one from-scratch training: the selection's digest, the recipe (seed included) and where it
    runs. CPU training is deterministic for a thread count, so the count is part of the key; a GPU's is not, and
    there the key says "the same recipe on the same data"."""
    threads = torch.get_num_threads() if device.split(":")[0] == "cpu" else 0
    spec = {"uids": selection_digest, **recipe, "device": device.split(":")[0], "threads": threads}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def pairs_digest(uids: Sequence[str], captions: Sequence[str], blobs: Sequence[bytes]) -> str:
    """What a training sees of its subset, in its order (the order seeds the epochs' permutations): every uid,
    caption and encoded image."""
    h = hashlib.sha256()
    for uid, caption, blob in zip(uids, captions, blobs, strict=True):
        for part in (uid.encode(), caption.encode(), blob):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def kept_checkpoint(out_dir: str | Path, key: str) -> dict | None:
    """The info of the checkpoint under `out_dir` when it was trained under `key` (weights present), else None:
    a rematerialization with the same subset, recipe and seed keeps it instead of training it again."""
    out_dir = Path(out_dir)
    try:
        info = json.loads((out_dir / INFO).read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("key") == key and (out_dir / CHECKPOINT).exists() else None


def save_trained(result: TrainResult, params: TrainParams, out_dir: str | Path, extra: dict | None = None) -> dict:
    """The model's weights (safetensors, never pickle) and what it took to train it (its smoothed loss curve
    included); replaced atomically."""
    import open_clip
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    with staged_dir(out_dir) as staging:  # this writer's own staging folder, removed if anything fails
        state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, str(staging / CHECKPOINT))
        config = open_clip.get_model_config(params.model)
        if config is not None:  # kept beside the weights, so the checkpoint loads where the config is not registered
            (staging / "model_config").mkdir()
            write_json_atomic(config, staging / "model_config" / f"{params.model}.json")
        info = {"params": dataclasses.asdict(params), "samples_seen": result.samples_seen, "steps": result.steps,
                "epochs": result.epochs, "seconds": result.seconds, "final_loss": result.loss_per_step[-1],
                "loss_curve": [round(x, 5) for x in smooth(result.loss_per_step)],
                **(extra or {})}
        write_json_atomic(info, staging / INFO)
    return info


def load_trained(model_dir: str | Path, device: str = "cpu") -> tuple[ClipModelEncoder, dict]:
    """A trained_clip checkpoint as an encoder, rebuilt from the stored model config (no download)."""

    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    info = json.loads((model_dir / INFO).read_text())
    name = info["params"]["model"]
    stored = model_dir / "model_config" / f"{name}.json"
    model, preprocess, tokenizer = create_model(name, device, stored if stored.exists() else None)
    model.load_state_dict(load_file(str(model_dir / CHECKPOINT), device=device))
    model.eval()
    return ClipModelEncoder(model, preprocess, tokenizer, device), info


class ClipModelEncoder:
    """encode_images / encode_texts (L2-normalised float32) over a trained open_clip model."""

    def __init__(self, model, preprocess, tokenizer, device: str = "cpu", batch_size: int = 256):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size = device, batch_size

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [self.model.encode_image(torch.stack([self.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]])
                                       .to(self.device), normalize=True).float().cpu().numpy()
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = [self.model.encode_text(self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device), normalize=True)
               .float().cpu().numpy() for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


EXPORT_FORMATS = ("webdataset", "csv")


def export_subset(uids: Sequence[str], blobs: Sequence[bytes], formats: Sequence[str], captions: Sequence[str],
                  out_dir: str | Path, shard_size: int = 10_000,
                  kinds: Sequence[str] = EXPORT_FORMATS) -> dict:
    """A subset as WebDataset shards (`shards/{00000..}.tar`, members KEY.<ext> and KEY.txt) and/or as an
    open_clip CSV (`subset.csv`, tab-separated `filepath`/`title`, images under `images/`), for
    `open_clip_train.main --train-data ... --csv-img-key filepath --csv-caption-key title`."""
    import csv

    unknown = set(kinds) - set(EXPORT_FORMATS)
    if unknown or not kinds:
        raise ValueError(f"export formats must be among {', '.join(EXPORT_FORMATS)}, got {', '.join(kinds) or 'none'}")
    out_dir = Path(out_dir)
    n_shards = 0
    # this writer's own staging folder: final_subset and trained_clip[tads] both export to exports/tads
    with staged_dir(out_dir) as staging:
        if "webdataset" in kinds:
            (staging / "shards").mkdir()
        for start in range(0, len(uids) if "webdataset" in kinds else 0, shard_size):
            with tarfile.open(staging / "shards" / f"{n_shards:05d}.tar", "w") as tar:
                for uid, blob, fmt, cap in zip(uids[start : start + shard_size], blobs[start : start + shard_size],
                                               formats[start : start + shard_size], captions[start : start + shard_size]):
                    ext = {"jpeg": "jpg"}.get(fmt, fmt)
                    for name, data in ((f"{uid}.{ext}", blob), (f"{uid}.txt", cap.encode())):
                        info = tarfile.TarInfo(name)
                        info.size, info.mtime, info.mode = len(data), 0, 0o644
                        tar.addfile(info, io.BytesIO(data))
            n_shards += 1
        if "csv" in kinds:
            (staging / "images").mkdir()
            with open(staging / "subset.csv", "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t")
                writer.writerow(["filepath", "title"])
                for uid, blob, fmt, cap in zip(uids, blobs, formats, captions):
                    path = staging / "images" / f"{safe_file_stem(uid)}.{ {'jpeg': 'jpg'}.get(fmt, fmt)}"
                    path.write_bytes(blob)
                    writer.writerow([str(out_dir / "images" / path.name), cap])
    out = {"samples": len(uids), "shards": n_shards}
    if "webdataset" in kinds:
        out["webdataset"] = str(out_dir / "shards" / (f"{{00000..{n_shards - 1:05d}}}.tar" if n_shards > 1 else "00000.tar"))
    if "csv" in kinds:
        out["csv"] = str(out_dir / "subset.csv")
    return out
