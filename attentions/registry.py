"""The one interface every attention family implements, and the registry that builds them.

A family is an ``AttentionModule`` subclass registered under a short name. Its backends are
``Backend`` records: a small function that does the token attention with the module's own
weights, plus what the harness needs to know before running it (devices, dtypes, backward).

More than 400 lines: the whole contract a family implements (the base class, its validation helpers, the backend
record) and the registry that builds and lists families, in the one module a plugin author reads.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import inspect
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import nn

from .errors import AttentionConfigError, BackendUnavailableError

# Kinds of call an attention module remembers as validated (check_input); more start the memory afresh.
VALIDATED_CALLS_KEPT = 64
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DEVICE_TYPES: tuple[str, ...] = ("cpu", "cuda")  # the device types a backend may run on

Shape = tuple[int, ...]
# MACs of one call of a custom op (an autograd.Function) from its tensor inputs' and outputs' shapes
MacFormula = Callable[[list[Shape], list[Shape]], int]
# Measurements only a backend can take, over one pass of the module (a closure it calls once):
# {results column: value}
PassMetrics = Callable[[Callable[[], object]], dict[str, float]]


@dataclass(frozen=True)
class Backend:
    """One way of running a family's token attention on the module's shared weights."""

    name: str
    attend: Callable[..., Any]
    description: str
    devices: tuple[str, ...] = DEVICE_TYPES
    dtypes: tuple[torch.dtype, ...] = FLOAT_DTYPES  # on every device unless device_dtypes narrows them
    # (device, dtypes) pairs for devices that take only some of ``dtypes`` (e.g. CPU FlexAttention: no float64)
    device_dtypes: tuple[tuple[str, tuple[torch.dtype, ...]], ...] = field(default=())
    backward_devices: tuple[str, ...] | None = None  # None: a backward on every device it runs on
    requires: tuple[str, ...] = field(default=())  # importable modules the backend needs
    # the autograd.Functions it calls, by class name, with their MAC formulas, so that FLOP counters
    # that cannot look inside a custom op still count it (the harness registers them with fvcore)
    custom_ops: tuple[tuple[str, MacFormula], ...] = field(default=())
    # what the harness records for this backend beyond latency and memory (e.g. its kernels' tile efficiency)
    pass_metrics: PassMetrics | None = None

    def __post_init__(self) -> None:
        # a string such as "cuda" would be read as its letters, an unknown type such as "gpu" never matches
        for what, devices in (("devices", self.devices), ("backward_devices", self.backward_devices or ())):
            if not isinstance(devices, tuple) or not all(device in DEVICE_TYPES for device in devices):
                raise AttentionConfigError(f"backend '{self.name}': {what} must be a tuple of device types from "
                                           f"{', '.join(DEVICE_TYPES)}, got {devices!r}")
        if not isinstance(self.dtypes, tuple) or not all(isinstance(d, torch.dtype) for d in self.dtypes):
            raise AttentionConfigError(f"backend '{self.name}': dtypes must be a tuple of torch.dtype, "
                                       f"got {self.dtypes!r}")
        for device, dtypes in self.device_dtypes:
            if device not in self.devices or not set(dtypes) <= set(self.dtypes):
                raise AttentionConfigError(f"backend '{self.name}': device_dtypes for {device} must narrow its "
                                           f"devices {self.devices} and dtypes {self.dtypes}")

    def dtypes_on(self, device: torch.device | str) -> tuple[torch.dtype, ...]:
        """The dtypes this backend takes on ``device``."""
        return dict(self.device_dtypes).get(check_device(device), self.dtypes)

    def has_backward(self, device: torch.device | str) -> bool:
        devices = self.devices if self.backward_devices is None else self.backward_devices
        return check_device(device) in devices

    def availability(self, device: torch.device | str, backward: bool = False,
                     dtype: torch.dtype | None = None) -> tuple[bool, str]:
        """Whether this backend can run on ``device`` (with a backward, in ``dtype``, if asked) here, and why not.
        Arguments of the wrong kind raise ``AttentionConfigError``: they would otherwise read as a device
        PyTorch fails on, a truthy ``backward`` or a dtype that is merely unsupported."""
        check_flag("backward", backward)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise AttentionConfigError(f"dtype must be a torch.dtype (such as torch.float16) or None, got {dtype!r}")
        device_type = check_device(device)
        if device_type not in self.devices:
            return False, (f"backend '{self.name}' runs on {', '.join(self.devices)}, "
                           f"not on {device_type}")
        if dtype is not None and dtype not in self.dtypes_on(device_type):
            return False, (f"backend '{self.name}' does not support dtype {dtype} on {device_type}; supported "
                           f"there: {', '.join(str(d) for d in self.dtypes_on(device_type))}")
        if backward and not self.has_backward(device_type):
            return False, (f"backend '{self.name}' has no backward on {device_type}; run it under "
                           f"torch.no_grad() or torch.inference_mode(), or use another backend")
        if device_type == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA device is available in this process"
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return False, f"backend '{self.name}' needs the package(s) {', '.join(missing)}"
        return True, ""


class MacCount(dict):
    """Multiply-adds per part of one forward pass (papers' "FLOPs": 1 MAC = 1 FLOP)."""

    @property
    def total(self) -> int:
        return sum(self.values())


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Raise ``AttentionConfigError`` unless ``value`` is an integer ≥ ``minimum`` (an int or a numpy integer;
    not a bool, a float or a string); return it as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise AttentionConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_device(device: Any) -> str:
    """The type of ``device``, a torch.device or a string such as 'cpu' or 'cuda:0'. A type PyTorch knows
    but no backend runs on (meta, mps) is returned, for ``Backend.availability`` to refuse with a reason;
    anything PyTorch cannot read as a device raises ``AttentionConfigError`` instead of its RuntimeError."""
    if isinstance(device, torch.device):
        return device.type
    if isinstance(device, str):
        try:
            return torch.device(device).type
        except RuntimeError:
            pass
    raise AttentionConfigError(f"device must be a torch.device or a string such as 'cpu' or 'cuda:0' (backends "
                               f"run on {', '.join(DEVICE_TYPES)}), got {device!r}")


def check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """Raise ``AttentionConfigError`` unless ``value`` is a finite real number (> 0 with ``positive``);
    return it as a float. Booleans and strings are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise AttentionConfigError(f"{name} must be a finite number{' > 0' if positive else ''}, got {value!r}")
    return float(value)


def check_flag(name: str, value: Any) -> None:
    """Raise ``AttentionConfigError`` unless ``value`` is True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise AttentionConfigError(f"{name} must be True or False, got {value!r}")


def check_matches_parameters(module: nn.Module, x: torch.Tensor, what: str) -> None:
    """Raise ``AttentionConfigError`` when ``x`` (named ``what``) is on another device or in another
    floating dtype than the module's parameters, instead of PyTorch's error from inside some layer.
    Under autocast, where mixing dtypes is intended, only the device is checked."""
    params = list(module.parameters())
    devices = {p.device for p in params}
    if devices and devices != {x.device}:
        names = sorted(map(str, devices))
        raise AttentionConfigError(
            f"{what} is on {x.device} but the module's parameters are on {' and '.join(names)}; move one to "
            f"the other: module.to('{x.device}') or x.to('{names[0]}')")
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    if dtypes and dtypes != {x.dtype}:
        names = sorted(map(str, dtypes))
        raise AttentionConfigError(
            f"{what} is {x.dtype} but the module's parameters are {' and '.join(names)}; convert one to the "
            f"other: module.to({x.dtype}) or x.to({names[0]})")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise ``AttentionConfigError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise AttentionConfigError(f"unknown {name} {value!r}; valid: {', '.join(map(repr, allowed))}")


class AttentionModule(nn.Module):
    """Base of every family: NHWC in, NHWC out, one set of weights for all backends."""

    family: ClassVar[str]
    backends: ClassVar[dict[str, Backend]]
    reference_backend: ClassVar[str] = "torch"  # the plain implementation other backends are checked against

    def __init__(self, dim: int, num_heads: int, backend: str) -> None:
        super().__init__()
        dim, num_heads = check_positive_int("dim", dim), check_positive_int("num_heads", num_heads)
        if dim % num_heads:
            raise AttentionConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self._validated_calls: set[tuple] = set()  # see check_input
        self.backend = backend

    @property
    def backend(self) -> str:
        """Name of the backend the next forward uses; assignable on a live module."""
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        check_choice(f"backend for '{self.family}'", name, tuple(self.backends))
        self._backend = name

    def check_input(self, x: torch.Tensor) -> None:
        """Validate an NHWC input (see ``validate_input``), once per kind of call: a call like one already
        validated (same shape, dtype, device, backend, whether a backward is wanted, autocast) is a cache
        hit and runs no checks, so that a timed forward is the computation. Moving or converting the
        module (``.to()``, ``.half()``, ...) and changing its backend start afresh; the family's options
        are fixed at construction. Traced by torch.compile, it validates without the cache."""
        if not isinstance(x, torch.Tensor) or torch.compiler.is_compiling():
            # under torch.compile the checks run once, as the graph is traced: a cache there would be state that
            # dynamo guards on, and the first compile would be thrown away for a second
            self.validate_input(x)
            return
        # autocast on any device (one C call; the per-device query costs a Python device lookup more)
        key = (x.shape, x.dtype, x.device, self._backend, self.needs_backward(x), torch._C._is_any_autocast_enabled())
        if key in self._validated_calls:
            return
        self.validate_input(x)
        if len(self._validated_calls) >= VALIDATED_CALLS_KEPT:
            self._validated_calls.clear()
        self._validated_calls.add(key)

    def validate_input(self, x: torch.Tensor) -> None:
        """Every check of an NHWC input, uncached: its shape, that the current backend can run on it
        (device, dtype, backward) and that it is on the parameters' device and in their dtype."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise AttentionConfigError(f"expected an NHWC tensor (B, H, W, C), got {shape}")
        if x.shape[-1] != self.dim:
            raise AttentionConfigError(
                f"input has {x.shape[-1]} channels (shape {tuple(x.shape)}), the module was built "
                f"with dim={self.dim}; inputs are NHWC")
        if min(x.shape[:3]) < 1:
            raise AttentionConfigError(f"input has an empty dimension: {tuple(x.shape)}")
        self.check_map_size(x.shape[1], x.shape[2])
        ok, reason = self.backends[self.backend].availability(x.device, backward=self.needs_backward(x),
                                                              dtype=x.dtype)
        if ok:
            reason = self.unsupported_reason() or ""
        if reason:
            raise BackendUnavailableError(f"'{self.family}' backend '{self.backend}': {reason}")
        check_matches_parameters(self, x, "the input")

    def needs_backward(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` now records a graph for a backward (of the input or a parameter)."""
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _apply(self, fn, recurse: bool = True):
        """``.to()``, ``.cuda()``, ``.half()`` and the like: inputs are validated afresh afterwards."""
        self._validated_calls.clear()
        return super()._apply(fn, recurse)

    def check_map_size(self, height: int, width: int) -> None:
        """Raise ``AttentionConfigError`` when this module's options cannot take an H×W map (regions
        that do not divide it, a stride wider than it). ``check_input`` calls it; a sweep planner calls
        it on a module built on the meta device, so that a bad size is refused before anything runs."""

    def exact_copy(self, x: torch.Tensor) -> AttentionModule:
        """A float64 copy on the reference backend that computes what this module computes on ``x`` (in its
        dtype), without rounding: the harness's yardstick of accuracy (``bench.core.accuracy``). A family whose
        forward makes discrete choices from rounded values overrides it so that the copy makes this
        module's choices on ``x`` (BRA: its top-k routing), else a near-tie that float64 breaks the other
        way would turn rounding into a different computation."""
        exact = copy.deepcopy(self).double()
        exact.backend = self.reference_backend
        return exact

    def unsupported_reason(self) -> str | None:
        """Why the current backend cannot express this module's options, or None when it can."""
        return None

    @property
    def attend(self) -> Callable[..., Any]:
        """The current backend's token-attention function."""
        return self.backends[self.backend].attend

    def macs(self, batch: int, height: int, width: int) -> MacCount:
        """Analytic multiply-adds of one forward on a (batch, height, width, dim) input, as it runs (on the
        padded map, for a family that pads one). Sizes that are not integers >= 1, or a map the module
        cannot take, raise ``AttentionConfigError``, as its forward would."""
        return self.count_macs(*self._checked_sizes(batch, height, width))

    def useful_macs(self, batch: int, height: int, width: int) -> MacCount:
        """The multiply-adds of ``macs`` that serve the H×W map itself: for a family that pads the map (BRA's
        auto_pad), those of the padding's own tokens left out. Throughput figures count these."""
        return self.count_useful_macs(*self._checked_sizes(batch, height, width))

    def _checked_sizes(self, batch: int, height: int, width: int) -> tuple[int, int, int]:
        """``batch``, ``height`` and ``width`` as ints, once each is known to be an integer >= 1 and the
        module to take an H×W map; else ``AttentionConfigError``. A str batch would repeat the counts'
        strings, a negative one negate them."""
        sizes = (check_positive_int("batch", batch), check_positive_int("height", height),
                 check_positive_int("width", width))
        self.check_map_size(sizes[1], sizes[2])
        return sizes

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        """What ``macs`` returns, for sizes it has checked: every family implements it."""
        raise NotImplementedError

    def count_useful_macs(self, batch: int, height: int, width: int) -> MacCount:
        """What ``useful_macs`` returns, for sizes it has checked: ``count_macs`` unless the family pads."""
        return self.count_macs(batch, height, width)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend!r}"


_FAMILIES: dict[str, type[AttentionModule]] = {}


def register(cls: type[AttentionModule]) -> type[AttentionModule]:
    """Class decorator: make a family buildable by its ``family`` name. A class the registry could not build
    or list (not an AttentionModule subclass, no family name, backends that are not ``Backend`` records or
    lack its reference backend) raises ``AttentionConfigError``."""
    if not (isinstance(cls, type) and issubclass(cls, AttentionModule)):
        raise AttentionConfigError(f"register takes an AttentionModule subclass, got {cls!r}")
    family, backends = getattr(cls, "family", None), getattr(cls, "backends", None)
    if not isinstance(family, str) or not family:
        raise AttentionConfigError(f"{cls.__name__}.family must be a non-empty string, got {family!r}")
    if not isinstance(backends, dict) or not all(isinstance(b, Backend) for b in backends.values()):
        raise AttentionConfigError(f"{cls.__name__}.backends must be a dict of Backend records, got {backends!r}")
    if cls.reference_backend not in backends:
        raise AttentionConfigError(f"{cls.__name__}.reference_backend {cls.reference_backend!r} is not one of its "
                                   f"backends: {', '.join(map(repr, backends))}")
    _FAMILIES[family] = cls
    return cls


def _family(name: str) -> type[AttentionModule]:
    if not isinstance(name, str) or name not in _FAMILIES:
        raise AttentionConfigError(f"unknown attention {name!r}; valid: {', '.join(map(repr, _FAMILIES))}")
    return _FAMILIES[name]


def family_options(name: str) -> dict[str, Any]:
    """A family's constructor options (beyond dim, num_heads, backend) with their defaults."""
    params = inspect.signature(_family(name).__init__).parameters
    return {p: params[p].default for p in params if p not in ("self", "dim", "num_heads", "backend")}


def build(name: str, *, dim: int, num_heads: int, backend: str = "torch", **options: Any) -> AttentionModule:
    """Build attention family ``name``; unknown options are an error, not silently dropped."""
    cls = _family(name)
    allowed = family_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise AttentionConfigError(
            f"unknown option(s) {', '.join(unknown)} for '{name}'; valid: {', '.join(allowed)}")
    return cls(dim, num_heads, backend=backend, **options)


def list_attentions() -> dict[str, dict[str, Any]]:
    """Describe every family: class, options with defaults, and each backend's capabilities."""
    return {
        name: {
            "class": cls.__name__,
            "options": family_options(name),
            "reference_backend": cls.reference_backend,
            "backends": {
                b.name: {
                    "description": b.description,
                    "devices": list(b.devices),
                    "dtypes": [str(d).removeprefix("torch.") for d in b.dtypes],  # on some device
                    "device_dtypes": {d: [str(t).removeprefix("torch.") for t in b.dtypes_on(d)] for d in b.devices},
                    "backward": [d for d in b.devices if b.has_backward(d)],
                    "requires": list(b.requires),
                }
                for b in cls.backends.values()
            },
        }
        for name, cls in _FAMILIES.items()
    }


def extension_modules() -> tuple[str, ...]:
    """Modules outside this package that define a registered family or one of its backends' functions (a
    researcher's own), in registration order. A fresh process imports them to see the same registry (a
    family defined in a script run as ``__main__`` is left out: a spawned process re-runs that script's
    top level itself)."""
    names: list[str] = []
    for cls in _FAMILIES.values():
        for defined in (cls, *(backend.attend for backend in cls.backends.values())):
            module = getattr(defined, "__module__", None)
            if module and module != "__main__" and module.split(".")[0] not in ("attentions", "torch") \
                    and module not in names:
                names.append(module)
    return tuple(names)


def custom_op_macs() -> dict[str, MacFormula]:
    """Every registered backend's custom ops (autograd.Function class names) and their MAC formulas."""
    return {op: formula for cls in _FAMILIES.values() for b in cls.backends.values() for op, formula in b.custom_ops}


# The fields of a Backend that say where it runs, which a tool may override for a while (overridden_capabilities).
CAPABILITIES = ("devices", "dtypes", "device_dtypes", "backward_devices", "requires")


@contextlib.contextmanager
def overridden_capabilities(select: Callable[[Backend], bool], **capabilities: Any) -> Iterator[None]:
    """Within the block, every registered backend for which ``select(backend)`` is true declares
    ``capabilities`` (fields of ``CAPABILITIES``, validated like a new ``Backend``'s) instead of its own; on exit
    every family has its own backends again. For tools that exercise a backend where it cannot run: e.g.
    capturing Triton kernels' launches on the CPU to compile them for a GPU that is not there."""
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown:
        raise AttentionConfigError(f"overridden_capabilities: {', '.join(unknown)} are not capabilities; "
                                   f"valid: {', '.join(CAPABILITIES)}")
    saved = {name: cls.backends for name, cls in _FAMILIES.items()}
    try:
        for cls in _FAMILIES.values():
            cls.backends = {name: dataclasses.replace(b, **capabilities) if select(b) else b
                            for name, b in cls.backends.items()}
        yield
    finally:
        for name, cls in _FAMILIES.items():
            if name in saved:
                cls.backends = saved[name]


def backend_available(name: str, backend: str, device: torch.device | str = "cpu",
                      backward: bool = False, dtype: torch.dtype | None = None) -> tuple[bool, str]:
    """Whether ``backend`` of family ``name`` can run on ``device`` here (with a backward, in ``dtype``,
    if asked), and the reason if not."""
    cls = _family(name)
    if backend not in tuple(cls.backends):
        return False, f"'{name}' has no backend {backend!r}; valid: {', '.join(map(repr, cls.backends))}"
    return cls.backends[backend].availability(device, backward=backward, dtype=dtype)
