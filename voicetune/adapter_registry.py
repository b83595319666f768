"""Which adapters the loaded base model answers with: checked against the base, loaded by name, evicted.

Adapters are asked for by name (a run id); PEFT holds them under internal names, one per version of the
weights on disk, at most `max_adapters` at a time (least recently used evicted). The registry holds the model
itself, because loading the first adapter wraps it in a PeftModel, and the lock every user of that model takes.

    registry = AdapterRegistry(model, base_model="smollm2", base_hash=..., template_hash=...)
    name = registry.load("workspace/runs/demo")      # "demo"
    with registry.lock:
        registry.peft_names([None, name])              # [None, "adapter1"]: loaded until the lock is released
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicetune import models
from voicetune.runs import ADAPTER_WEIGHTS, RunError
from voicetune.runs import read as read_run


class AdapterError(ValueError):
    """An adapter that cannot be used: missing, truncated, or not a voicetune adapter."""


class AdapterMismatch(AdapterError):
    """An adapter trained on another base model or chat template."""


def weights_key(folder: str | Path) -> tuple[str, int, int]:
    """What identifies an adapter's weights: its folder, and the modification time and size of its weights.

    A run folder republished by a new training or an import gets a new key, so it is loaded again instead of
    answering with the weights that were in memory.
    """
    path = Path(folder).resolve()
    stat = (path / ADAPTER_WEIGHTS).stat()
    return str(path), stat.st_mtime_ns, stat.st_size


class AdapterRegistry:
    """The base model with the adapters loaded onto it, and the one lock for running or changing it.

    Every call that runs the model or changes its adapters holds `lock`, so a scorecard loading its adapter
    never lands in the middle of another visitor's compare round on the same model object. `on_evict` hears
    each PEFT name deleted, so what was kept for it elsewhere (the prompt cache) goes with it.
    """

    max_adapters = 8  # adapters kept in memory; a compare round uses at most 4 and the scorecard 1

    def __init__(self, model: Any, *, base_model: str, base_hash: str, template_hash: str,
                 skinny_decode: bool = False, on_evict: Callable[[str], None] = lambda peft_name: None):
        self.model = model  # becomes a PeftModel when the first adapter loads
        self.base_model, self.base_hash, self.template_hash = base_model, base_hash, template_hash
        self.skinny_decode = skinny_decode  # the adapters' own layers get the base's decoding lever
        self.on_evict = on_evict
        # The decoder takes it in its worker thread, so never ask for replies while holding it yourself: that
        # thread would wait for you forever.
        self.lock = threading.RLock()
        self.adapters: dict[str, str] = {}  # name -> folder, as asked for by load
        self._loaded: OrderedDict[tuple[str, int, int], str] = OrderedDict()  # weights key -> PEFT name, LRU order
        self._serial = 0  # numbers the PEFT names, which must never be reused for other weights

    @property
    def any_loaded(self) -> bool:
        """Whether the model is a PeftModel with adapters: only then does it take `adapter_names`."""
        return bool(self._loaded)

    def check(self, adapter_dir: str | Path) -> dict[str, Any]:
        """Refuse an adapter trained on another base model or template, before loading any weight."""
        record = read_run(adapter_dir)
        if record.get("base_model_hash") != self.base_hash:
            raise AdapterMismatch(
                f"adapter {Path(adapter_dir).name} was trained on {record.get('base_model')!r}, "
                f"not on the loaded base model {self.base_model!r}"
            )
        if record.get("template_hash") != self.template_hash:
            raise AdapterMismatch(f"adapter {Path(adapter_dir).name} was trained with a different chat template")
        return record

    def load(self, adapter_dir: str | Path, name: str | None = None) -> str:
        """Make the adapter in `adapter_dir` answer to `name` (default: the folder's name); returns the name."""
        name = name or Path(adapter_dir).name
        try:
            self.check(adapter_dir)  # refuse early, with the record's own message, before any lock
        except RunError as e:
            raise AdapterError(str(e)) from e
        with self.lock:
            self.adapters[name] = str(adapter_dir)
            try:
                self.peft_names([name])
            except AdapterError:
                del self.adapters[name]
                raise
        return name

    def require(self, names: list[str | None]) -> None:
        """Refuse a name never loaded, in the caller's thread, before any work starts."""
        for name in names:
            if name is not None and name not in self.adapters:
                raise KeyError(f"adapter {name!r} is not loaded")

    def peft_names(self, names: list[str | None]) -> list[str | None]:
        """The PEFT adapter name serving each asked name (None: the base), loading what is missing or stale.

        Called with `lock` held, just before the model runs, so what it returns stays loaded until then.
        """
        self.require(names)
        out: list[str | None] = []
        for name in names:
            if name is None:
                out.append(None)
                continue
            folder = self.adapters[name]
            try:
                key = weights_key(folder)
            except OSError as e:
                raise AdapterError(f"adapter {Path(folder).name} is gone: {e.strerror}") from e
            if key not in self._loaded:
                self._loaded[key] = self._load_weights(folder)
            self._loaded.move_to_end(key)
            out.append(self._loaded[key])
        self._evict(keep={n for n in out if n is not None})
        return out

    def _load_weights(self, folder: str) -> str:
        """Load one version of an adapter's weights under a fresh PEFT name (lock held); returns that name."""
        from peft import PeftModel

        try:
            self.check(folder)
        except RunError as e:
            raise AdapterError(str(e)) from e
        self._serial += 1
        peft_name = f"adapter{self._serial}"  # never a folder name: PEFT refuses names with dots
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(folder, adapter_name=peft_name)
            else:
                self.model = PeftModel.from_pretrained(self.model, folder, adapter_name=peft_name)
        except Exception as e:  # noqa: BLE001 - a damaged file surfaces as many different library errors
            raise AdapterError(f"adapter {Path(folder).name} could not be loaded (damaged or incomplete "
                               f"files?): {type(e).__name__}: {str(e)[:200]}") from e
        self.model.eval()
        if self.skinny_decode:
            models.speed_up_small_batches(self.model)  # the adapter's own layers
        return peft_name

    def _evict(self, keep: set[str]) -> None:
        """Delete weights no longer on disk under their folder (a republished run's old version), then the least
        recently used beyond max_adapters; never one in `keep`, the request about to run."""
        wanted = set()
        for folder in set(self.adapters.values()):
            with contextlib.suppress(OSError):
                wanted.add(weights_key(folder))
        for key in [k for k in self._loaded if k not in wanted] + list(self._loaded):
            if key not in self._loaded or self._loaded[key] in keep:
                continue
            if key in wanted and len(self._loaded) <= self.max_adapters:
                continue
            peft_name = self._loaded.pop(key)
            self.model.delete_adapter(peft_name)
            self.on_evict(peft_name)
