"""Per-image salient-object maps: an ONNX model (IS-Net / U²-Net) or spectral residual.

A saliency backend turns an RGB image into a float32 (H, W) foreground map in [0, 1] at the
image's resolution. Two backends:

* ``OnnxSaliency(path)``: a salient-object network exported to ONNX, run with onnxruntime.
  The model must take one float32 image tensor (N, 3, H, W) (N = 1 or dynamic) and return the
  foreground map as its first output, (N, 1, H, W) or (N, H, W). Two input conventions:
  ``isnet`` (IS-Net / DIS: RGB / 255 − 0.5, std 1) and ``u2net`` (U²-Net: RGB / max,
  ImageNet mean/std). A model with fixed spatial dims runs at that size; one with dynamic dims
  runs at ``size`` (default 1024 for ``isnet``, 320 for ``u2net``). The output is min-max
  normalised per image (as rembg does), then resized to the image.
* ``SpectralResidual()``: Hou & Zhang's spectral residual (CVPR 2007), the algorithm of
  OpenCV-contrib's ``StaticSaliencySpectralResidual`` (64 x 64 grey thumbnail, log amplitude
  minus its 3x3 mean, inverse FFT with the original phase, squared, Gaussian blur). Weight-free
  and fast, much weaker than a trained network (it marks edges and texture, not objects).

Maps are expensive (IS-Net: seconds per image on a CPU), so ``SaliencyCache`` stores them as
8-bit PNGs under ``DIR/<backend key>/<image sha256>.png``: the key names the backend, its
model file's SHA-256 and its settings, and the image is identified by its bytes, so a cache is
shared between runs, output folders and benchmarks and never serves a stale map.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from weakpaste.core.errors import WeakpasteError
from weakpaste.core.files import atomic_write_bytes
from weakpaste.core.manifest import file_sha256
from weakpaste.core.options import flag_of
from weakpaste.mine.config import FreeSegConfig

_SALIENCY, _SALIENCY_SIZE = (flag_of(FreeSegConfig, n) for n in ("saliency", "saliency_size"))

CONVENTIONS: dict[str, dict] = {
    # IS-Net (DIS): normalize(img / 255, mean 0.5, std 1).
    "isnet": {"mean": (0.5, 0.5, 0.5), "std": (1.0, 1.0, 1.0), "size": 1024},
    # U²-Net (rembg): img / max(img), ImageNet mean/std.
    "u2net": {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "size": 320},
}


def _normalise(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise a map to [0, 1] (a constant map becomes zeros); float32."""
    s = saliency.astype(np.float32)
    lo, hi = float(s.min()), float(s.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi - lo < 1e-12:
        return np.zeros_like(s, dtype=np.float32)
    return (s - lo) / (hi - lo)


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
    return image


class _Backend:
    """A saliency model: ``backend(image)`` -> its map; ``backend.key`` names it for caches."""

    key: str

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Saliency of one image.

        Args:
            image: uint8 (H, W, 3) RGB.

        Returns:
            float32 (H, W) in [0, 1].
        """
        return self._map(_check_rgb(image))

    def _map(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SpectralResidual(_Backend):
    """Spectral-residual saliency (weight-free fallback), as OpenCV-contrib computes it.

    The grey image is resized to a ``thumb`` x ``thumb`` thumbnail; the residual is the log
    amplitude spectrum minus its 3x3 mean; the map is the squared magnitude of the inverse
    transform with the original phase, blurred by a 5x5 Gaussian (sigma 8, i.e. nearly a box
    filter), resized back to the image and min-max normalised. It responds to "unexpected"
    structure such as edges and texture, not to object interiors: much weaker than a trained
    network, useful when no model file is available.

    Args:
        thumb: the thumbnail's side in pixels (OpenCV-contrib: 64).
    """

    def __init__(self, thumb: int = 64) -> None:
        self.thumb = int(thumb)

    @property
    def key(self) -> str:
        """Cache key: names the algorithm and its settings."""
        return f"spectral-t{self.thumb}"

    def _map(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
        small = cv2.resize(grey, (self.thumb, self.thumb), interpolation=cv2.INTER_AREA)
        spectrum = np.fft.fft2(small)
        amplitude = np.log(np.abs(spectrum) + 1e-8)
        phase = np.angle(spectrum)
        residual = amplitude - cv2.blur(amplitude, (3, 3), borderType=cv2.BORDER_REPLICATE)
        sal = np.abs(np.fft.ifft2(np.exp(residual + 1j * phase))) ** 2
        sal = cv2.GaussianBlur(sal.astype(np.float32), (5, 5), 8)
        sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
        return _normalise(sal)


class OnnxSaliency(_Backend):
    """A salient-object network in ONNX (IS-Net / U²-Net conventions), run with onnxruntime.

    Args:
        path: the ``.onnx`` file.
        convention: ``isnet`` or ``u2net`` preprocessing (see the module docstring).
        size: input side for a model with dynamic spatial dims (default: the convention's).
        threads: onnxruntime intra-op threads (None: its default).
        rescale: for a model with a fixed input size and a different ``size``, rewrite the
            graph to run at ``size`` (see :func:`rescale_fixed_input`; needs the ``onnx``
            package) instead of refusing. IS-Net at 512 px instead of its 1024: ~4x faster.

    Raises:
        WeakpasteError: missing file, onnxruntime not installed, a file onnxruntime cannot
            load, or a model whose inputs/outputs do not follow the convention.
    """

    def __init__(self, path: str | os.PathLike, convention: str = "isnet",
                 size: int | None = None, threads: int | None = None,
                 rescale: bool = False) -> None:
        self.path = Path(path)
        if convention not in CONVENTIONS:
            raise WeakpasteError(f"unknown saliency convention {convention!r}; choose "
                                 f"{' or '.join(CONVENTIONS)}")
        self.convention = convention
        if not self.path.is_file():
            raise WeakpasteError(f"{self.path}: saliency model not found; pass an ONNX "
                                 f"salient-object model ({_SALIENCY} PATH) or {_SALIENCY} spectral")
        try:
            import onnxruntime as ort
        except ImportError:
            raise WeakpasteError("onnxruntime is not installed; pip install onnxruntime, or use "
                                 f"{_SALIENCY} spectral") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = self._load(ort, str(self.path), opts)
        self._input, self.size = self._check_io(None if rescale else size)
        if rescale and size is not None and int(size) != self.size:
            model, _ = rescale_fixed_input(self.path.read_bytes(), int(size), self.path)
            self._session = self._load(ort, model, opts)
            self._input, self.size = self._check_io(None)
        self._sha = None

    def _load(self, ort, model: str | bytes, opts):
        try:
            return ort.InferenceSession(model, sess_options=opts,
                                        providers=["CPUExecutionProvider"])
        except Exception as err:
            msg = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise WeakpasteError(f"{self.path}: onnxruntime cannot load the model ({msg}); "
                                 "pass a valid ONNX salient-object model") from None

    def _check_io(self, size: int | None) -> tuple[str, int]:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        expected = ("one float32 image input of shape [1, 3, H, W] "
                    "(IS-Net/U²-Net convention, e.g. 'input' [1, 3, 1024, 1024])")
        found = ", ".join(f"{i.name!r} {list(i.shape)} {i.type}" for i in inputs) or "none"
        ok = len(inputs) == 1 and inputs[0].type == "tensor(float)" \
            and len(inputs[0].shape) == 4
        if ok:
            n, c, h, w = inputs[0].shape
            ok = (not isinstance(n, int) or n == 1) and c == 3
        if not ok:
            raise WeakpasteError(f"{self.path}: expected {expected}, found {found}; export the "
                                 f"model with such an input or use {_SALIENCY} spectral")
        out_shape = outputs[0].shape if outputs else []
        if not outputs or len(out_shape) not in (3, 4) or (
                len(out_shape) == 4 and isinstance(out_shape[1], int) and out_shape[1] != 1):
            got = f"{outputs[0].name!r} {list(out_shape)}" if outputs else "none"
            raise WeakpasteError(f"{self.path}: expected the first output to be the "
                                 f"foreground map [1, 1, H, W] or [1, H, W], found {got}; "
                                 "export the model with the map as its first output")
        fixed = [d for d in (h, w) if isinstance(d, int) and d > 0]
        if len(fixed) == 2:
            if h != w:
                raise WeakpasteError(f"{self.path}: expected a square input [1, 3, S, S], "
                                     f"found {found}; export the model with a square input")
            side = int(h)
            if size is not None and int(size) != side:
                raise WeakpasteError(f"{self.path}: the model's input is fixed at {side}x{side}"
                                     f", so {_SALIENCY_SIZE} {size} cannot be used; drop it or "
                                     "export the model with dynamic height/width")
        else:
            side = int(size or CONVENTIONS[self.convention]["size"])
        if side < 8:
            raise WeakpasteError(f"{self.path}: saliency input size {side} is too small; use "
                                 "at least 8")
        return inputs[0].name, side

    @property
    def sha256(self) -> str:
        if self._sha is None:
            self._sha = file_sha256(self.path)
        return self._sha

    @property
    def key(self) -> str:
        """Cache key: the model file's content, the convention and the input size."""
        return f"onnx-{self.sha256[:16]}-{self.convention}-{self.size}"

    def _map(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        conv = CONVENTIONS[self.convention]
        x = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        x = x.astype(np.float32)
        x /= 255.0 if self.convention == "isnet" else max(float(x.max()), 1e-6)
        x = (x - np.asarray(conv["mean"], np.float32)) / np.asarray(conv["std"], np.float32)
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        out = self._session.run(None, {self._input: x})[0]
        sal = np.asarray(out, dtype=np.float32).reshape(out.shape[-2], out.shape[-1])
        sal = cv2.resize(sal, (w, h), interpolation=cv2.INTER_LINEAR)
        return _normalise(sal)


def rescale_fixed_input(model: bytes, size: int, source: str | os.PathLike = "model"
                        ) -> tuple[bytes, int]:
    """Rewrite an ONNX model with a fixed square input (1, 3, S, S) to run at ``size``.

    Exported networks such as IS-Net fix their spatial size twice: in the input/output shapes
    and in the constant output sizes of their ``Resize`` nodes (IS-Net: 39 of them, 32..1024
    px). Both are scaled by ``size / S``; ``Resize`` nodes driven by scales need nothing. A
    model whose other shapes are fixed too (e.g. constant ``Reshape`` targets over the spatial
    dims) is not handled: onnxruntime then fails to load or run it.

    Args:
        model: the serialised ONNX model.
        size: the new input side, in pixels (>= 8).
        source: the model's path, for error messages.

    Returns:
        (the serialised rewritten model, the number of ``Resize`` sizes rewritten).

    Raises:
        WeakpasteError: the ``onnx`` package is missing, or the input is not a fixed square.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise WeakpasteError(f"{source}: running this fixed-size model at {size} px needs the "
                             f"onnx package (pip install onnx); or drop {_SALIENCY_SIZE}") from None
    proto = onnx.load_model_from_string(model)
    graph = proto.graph
    dims = graph.input[0].type.tensor_type.shape.dim if len(graph.input) else []
    side = dims[2].dim_value if len(dims) == 4 else 0
    if side <= 0 or dims[3].dim_value != side or size < 8:
        raise WeakpasteError(f"{source}: only a fixed square input [1, 3, S, S] can be "
                             "rescaled (to a size >= 8); export the model with dynamic "
                             "height/width instead")
    # Resize sizes are initializers or Constant nodes' values.
    tensors = {t.name: t for t in graph.initializer}
    tensors.update({n.output[0]: n.attribute[0].t for n in graph.node
                    if n.op_type == "Constant" and n.attribute
                    and n.attribute[0].name == "value"})
    count = 0
    for node in graph.node:
        if node.op_type != "Resize" or len(node.input) < 4 or node.input[3] not in tensors:
            continue
        tensor = tensors[node.input[3]]
        sizes = numpy_helper.to_array(tensor).astype(np.int64)
        sizes[2:] = np.maximum(1, np.rint(sizes[2:] * size / side)).astype(np.int64)
        tensor.CopyFrom(numpy_helper.from_array(sizes, tensor.name))
        count += 1
    for value in [*graph.input, *graph.output]:
        for d in value.type.tensor_type.shape.dim[-2:]:
            if d.dim_value == side:
                d.dim_value = size
    del graph.value_info[:]  # stale intermediate shapes; onnxruntime infers them again
    return proto.SerializeToString(), count


def make_saliency(spec: str, *, convention: str = "isnet", size: int | None = None,
                  threads: int | None = None, rescale: bool = False):
    """A backend from a command-line value: ``spectral`` or the path of an ONNX model
    (``rescale``: run a fixed-size model at ``size``, see :class:`OnnxSaliency`)."""
    if spec == "spectral":
        return SpectralResidual()
    return OnnxSaliency(spec, convention=convention, size=size, threads=threads,
                        rescale=rescale)


class SaliencyCache:
    """Maps on disk: ``root/<backend key>/<image sha256[:32]>.png`` (8-bit, image size).

    Args:
        root: the cache folder (created on first write).
        key: the backend's ``key``.
    """

    def __init__(self, root: str | os.PathLike, key: str) -> None:
        self.dir = Path(root) / key

    def path(self, digest: str) -> Path:
        return self.dir / f"{digest[:32]}.png"

    def get(self, digest: str, shape: tuple[int, int]) -> np.ndarray | None:
        """The cached map as float32 (H, W) in [0, 1], or None (absent, unreadable, wrong size)."""
        from weakpaste.io.images import decode_image, header_size

        try:
            data = np.fromfile(self.path(digest), dtype=np.uint8)
        except OSError:
            return None
        # The header must give the image's size before anything is decoded: the cache is a
        # folder others may write to, and a damaged or planted map is computed again.
        if header_size(data) != (shape[1], shape[0]):
            return None
        m = decode_image(data, self.path(digest), cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != tuple(shape):
            return None
        return m.astype(np.float32) / 255.0

    def put(self, digest: str, saliency: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        q = np.clip(np.rint(saliency * 255.0), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".png", q)
        if ok:
            atomic_write_bytes(self.path(digest), buf.tobytes())


def cached_saliency(backend, image: np.ndarray, digest: str,
                    cache: SaliencyCache | None) -> tuple[np.ndarray, bool]:
    """The map of one image, from the cache when present (computed and stored otherwise).

    Args:
        backend: a saliency backend (callable image -> map).
        image: uint8 (H, W, 3) RGB.
        digest: the image file's SHA-256.
        cache: where maps are kept, or None.

    Returns:
        (float32 (H, W) in [0, 1], True when it came from the cache).
    """
    if cache is not None:
        hit = cache.get(digest, image.shape[:2])
        if hit is not None:
            return hit, True
    sal = backend(image)
    if cache is not None:
        cache.put(digest, sal)
        # Serve what the cache holds (8-bit) so a first run and a resumed one agree exactly.
        sal = np.rint(np.clip(sal, 0, 1) * 255.0).astype(np.float32) / 255.0
    return sal, False
