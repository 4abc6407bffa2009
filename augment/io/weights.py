"""Finding VGG19 weights: an explicit path, then the torch hub cache, then a download.

Never falls back to random weights on its own: a run with random weights would write a
dataset of noise-smoothed copies that looks plausible and is useless, so only an explicit
``--weights random`` gives them, and every output row records which weights were used.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import torch

from ..config import WeightsFlavour
from ..engines.vgg import Flavour, random_state_dict
from ..errors import WeightsUnavailable
from .digests import file_sha256

log = logging.getLogger(__name__)

RANDOM = "random"
RANDOM_SEED = 0  # fixed, so "random" names one network in every run and test
# File names of known Caffe-converted VGG19 state dicts (torchvision key names, BGR 0..255 input).
CAFFE_FILES = ("vgg19-d01eb7cb.pth",)
# ...and by content: the first hex digits of their sha256, which torch hub file names carry,
# so that a renamed copy is still read as Caffe's (BGR, 0..255 input).
CAFFE_SHA256_PREFIXES = ("d01eb7cb",)
OFFLINE_ENV = "AUGMENT_OFFLINE"  # set to 1 to forbid downloads (pipelines, tests)
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class ResolvedWeights:
    tensors: dict[str, torch.Tensor] | Callable[[], dict[str, torch.Tensor]]  # or what makes them
    flavour: Flavour
    identity: str  # name@short-sha256, written into run.json and every manifest row
    location: str  # a path, or "random"
    guessed: bool = False  # an unknown file, its flavour the default (check_networks warns)

    @property
    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors() if callable(self.tensors) else self.tensors


class KnownModel(NamedTuple):
    name: str  # as messages say it
    flag: str  # the option that passes a file instead
    download: str  # the command that fetches it


# Networks augment uses: VGG19 for style transfer (torchvision's, or the Caffe original's
# conversion with --weights-flavour caffe), GoogLeNet for Deep Dream.
MODELS = {
    "vgg19": KnownModel("VGG19", "--weights", "augment weights download"),
    "vgg19_caffe": KnownModel(
        "Caffe VGG19", "--weights-flavour caffe --weights", "augment weights download --flavour caffe"
    ),
    "googlenet": KnownModel("GoogLeNet", "--dream-weights", "augment weights download"),
}
# The original VGG19 (Simonyan & Zisserman's Caffe model; BGR, 0..255 minus the mean),
# converted to a PyTorch state dict by jcjohnson/pytorch-vgg: the file neural-style-pt's
# download script fetches. Its name carries its sha256 prefix, which the download checks.
CAFFE_VGG19_URL = "https://web.eecs.umich.edu/~justincj/models/vgg19-d01eb7cb.pth"


def model_url(model: str = "vgg19") -> str:
    if model == "vgg19_caffe":
        return CAFFE_VGG19_URL
    from torchvision.models import GoogLeNet_Weights, VGG19_Weights

    enum = VGG19_Weights if model == "vgg19" else GoogLeNet_Weights
    return str(enum.IMAGENET1K_V1.url)


def vgg19_model(flavour: WeightsFlavour, spec: str | None) -> str:
    """Which VGG19 ``spec`` (--weights) means: a given file or "random" is "vgg19"; with none,
    the hub file --weights-flavour names (the Caffe conversion for caffe)."""
    return "vgg19_caffe" if flavour is WeightsFlavour.CAFFE and not spec else "vgg19"


def vgg19_url() -> str:
    return model_url("vgg19")


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_weights(model: str = "vgg19") -> Path:
    """Where torchvision keeps (or would keep) its ImageNet weights for ``model``."""
    return hub_checkpoint_dir() / os.path.basename(model_url(model))


def cached_vgg19() -> Path:
    return cached_weights("vgg19")


def tensors_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        digest.update(state_dict[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _hub_prefix(url: str) -> str:
    """The sha256 prefix a torch hub file name carries (vgg19-dcbb9e9d.pth: dcbb9e9d)."""
    return os.path.basename(url).rsplit(".", 1)[0].rsplit("-", 1)[-1]


def detect_flavour(path: Path, requested: WeightsFlavour, sha256: str = "") -> tuple[Flavour, bool]:
    """The preprocessing a VGG19 file needs, and whether it was guessed: as requested, else
    known by name or content, else torchvision's, guessed (check_networks warns about it once
    the file has loaded: its weights cannot tell, docs/method.md; only --weights-flavour can)."""
    if requested is not WeightsFlavour.AUTO:
        return Flavour(requested.value), False
    if path.name in CAFFE_FILES or "caffe" in path.name.lower() or sha256.startswith(CAFFE_SHA256_PREFIXES):
        return Flavour.CAFFE, False
    return Flavour.TORCHVISION, not sha256.startswith(_hub_prefix(model_url("vgg19")))


def _random_tensors(model: str) -> dict[str, torch.Tensor]:
    if model == "googlenet":
        from ..engines.googlenet import random_state_dict as random_googlenet

        return random_googlenet(RANDOM_SEED)
    return random_state_dict(RANDOM_SEED)


@functools.lru_cache(maxsize=2)
def _random_identity(model: str) -> str:
    return f"random@{tensors_sha256(_random_tensors(model))[:12]}"


def _random_weights(model: str = "vgg19") -> ResolvedWeights:
    """Made again (0.2 s) each time a network is built, so that no process holds them beside
    the network's own copy: they are not a file that processes could share (80 MB each)."""
    return ResolvedWeights(functools.partial(_random_tensors, model), Flavour.TORCHVISION, _random_identity(model),
                           RANDOM)  # fmt: skip


# The heads no engine runs: VGG19's classifier is 120 M of its 144 M parameters (~480 MB).
UNUSED_PREFIXES = ("classifier.", "fc.", "aux1.", "aux2.")


def _torch_load(path: Path) -> Any:
    """The file's tensors memory-mapped, so that only those a network copies are ever read
    into memory; a file in torch's legacy (pre-1.6, not zip) format cannot be mapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err) and "zip" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def _load_file(path: Path, flavour: WeightsFlavour) -> ResolvedWeights:
    try:
        state = _torch_load(path)
    except Exception as err:  # torch raises many types for a bad file; all mean "unusable"
        # One line: torch's own message runs to several and suggests weights_only=False,
        # which would run the file's code.
        text = str(err)
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        reason = lines[0] if lines else type(err).__name__  # an empty file: EOFError, no text
        if "WeightsUnpickler error:" in text:  # torch's weights-only refusal: what it found, not how to load it anyway
            found = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
            reason = f"not a plain file of tensors ({found}); it is not loaded"
        with contextlib.suppress(OSError), open(path, "rb") as handle:
            head = handle.read(8)
            if not head:
                reason = "the file is empty"
            elif not head.startswith((b"PK\x03\x04", b"\x80")):  # a zip (torch.save) or a pickle
                reason = f"not a PyTorch weights file (it starts with {head!r}; a saved error page?)"
        raise WeightsUnavailable(f"cannot read weights file {path}: {reason[:300]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"{path}: not a state dict")
    state = {k: v for k, v in state.items() if not (isinstance(k, str) and k.startswith(UNUSED_PREFIXES))}
    sha256 = file_sha256(path)
    detected, guessed = detect_flavour(path, flavour, sha256)
    return ResolvedWeights(state, detected, f"{path.name}@{sha256[:12]}", str(path), guessed=guessed)


def download_weights(model: str = "vgg19", *, progress: bool = True) -> Path:
    """Fetch torchvision's ImageNet weights for ``model`` into the hub cache (hash checked)."""
    url, target = model_url(model), cached_weights(model)
    _refuse_if_offline(model)
    try:
        log.info("downloading %s to %s", url, target)
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):  # a blocked network should fail, not hang
            torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu")
    except (URLError, OSError, RuntimeError, ValueError) as err:
        # from None: the message says what failed; urllib's chained traceback only buries it
        raise WeightsUnavailable(_missing_message(model, f"the download failed ({err})")) from None
    return target


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """The process's default socket timeout (torch.hub's download takes none of its own),
    put back afterwards."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_vgg19(*, progress: bool = True) -> Path:
    return download_weights("vgg19", progress=progress)


def _refuse_if_offline(model: str) -> None:
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsUnavailable(_missing_message(model, f"downloads are off ({OFFLINE_ENV} is set)"))


def _missing_message(model: str, why: str) -> str:
    name, flag, download = MODELS[model]
    return (
        f"no {name} weights: {cached_weights(model)} does not exist and {why}. "
        f"Copy {os.path.basename(model_url(model))} (from {model_url(model)}) to {hub_checkpoint_dir()}/, "
        f"or pass {flag} PATH, or run `{download}` where there is network "
        f"({flag.split()[-1]} random only for smoke tests)"
    )


def resolve_vgg19(
    spec: str | None,
    *,
    flavour: WeightsFlavour = WeightsFlavour.AUTO,
    download: bool = True,
) -> ResolvedWeights:
    """``spec``: a path, "random", or None for the hub cache then a download."""
    return resolve_weights("vgg19", spec, flavour=flavour, download=download)


def resolve_weights(
    model: str,
    spec: str | None,
    *,
    flavour: WeightsFlavour = WeightsFlavour.AUTO,
    download: bool = True,
) -> ResolvedWeights:
    """Weights for ``model`` ("vgg19" or "googlenet"): a path, "random", or None for the hub
    cache then a download (for VGG19, the file ``flavour`` names)."""
    if model == "vgg19":
        model = vgg19_model(flavour, spec)
    source = weights_source(model, spec, download=download)
    if source == RANDOM:
        return _random_weights(model)
    # A hub file's flavour is known; so is GoogLeNet's (it has one); a given VGG19 file's is
    # as requested or detected.
    known = WeightsFlavour.CAFFE if model == "vgg19_caffe" else WeightsFlavour.TORCHVISION
    if isinstance(source, Path):
        return _load_file(source, flavour if spec and model == "vgg19" else known)
    return _load_file(download_weights(model, progress=False), known)


def weights_source(model: str, spec: str | None, *, download: bool) -> Path | str:
    """Where ``model``'s weights come from: RANDOM, a file (given, or in the hub cache), or
    the URL to download; WeightsUnavailable where none will do."""
    if spec == RANDOM:
        return RANDOM
    if spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise WeightsUnavailable(f"weights file not found: {path}")
        return path
    cached = cached_weights(model)
    if cached.is_file():
        return cached
    if not download:
        raise WeightsUnavailable(_missing_message(model, "downloads are off (--no-download)"))
    return model_url(model)


def probe_download(model: str, url: str, *, timeout_s: float = 5.0) -> None:
    """WeightsUnavailable, with run's message, where the download of ``model`` could not start:
    downloads are off, or its host cannot be reached. A HEAD request through urllib, as the
    download goes (so an https_proxy counts); any HTTP answer means the host is there."""
    _refuse_if_offline(model)
    try:
        urlopen(Request(url, method="HEAD"), timeout=timeout_s).close()
    except HTTPError:
        pass
    except (URLError, OSError) as err:
        why = f"{urlparse(url).hostname} cannot be reached ({err})"
        raise WeightsUnavailable(_missing_message(model, why)) from None
