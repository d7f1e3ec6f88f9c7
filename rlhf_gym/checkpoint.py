"""Checkpoints without pickle, written atomically and verified when read back.

A training checkpoint directory holds::

    policy/                     the policy, via save_pretrained (safetensors weights, tokenizer, value head)
    reference/                  the frozen reference's weights, when the algorithm has one
    trainer_state.safetensors   optimizer tensors, RNG states, the state of the algorithm's components
    trainer_state.json          step, algorithm name, config, optimizer hyper-parameters, the rest of the state
    manifest.json               written last: every file's size and SHA-256, the format and the update count

A checkpoint is built in a hidden temporary directory next to its target (``.tmp-<name>-…``), every file is
fsync'ed, the manifest is written, and only then is the directory renamed into place. An existing checkpoint of
the same name (``last``) is moved aside first and deleted only after the new one is in place, so a kill or a full
disk at any moment leaves either the old checkpoint or the new one, whole; :func:`recover_checkpoints` tidies
what an interrupted save left behind. :func:`verify_checkpoint` checks the manifest before anything is loaded, so
a truncated, overwritten or missing file is one error that names it, never a silently different run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from rlhf_gym.errors import CheckpointError, file_error_message, write_error_message

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rlhf_gym-checkpoint-manifest-v1"
#: trainer_state.json ``format`` of checkpoints that carry a manifest (older ones loaded with a warning)
STATE_FORMAT = "rlhf_gym-checkpoint-v2"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
_STEP_NAME = re.compile(r"^step-(\d+)$")

#: test hook: called with the name of each phase of a save (see :func:`fault_point`)
phase_hook: Callable[[str], None] | None = None


def fault_point(phase: str) -> None:
    """Mark a phase of a checkpoint save; fault-injection tests pause, kill or fail the process here."""
    if phase_hook is not None:
        phase_hook(phase)


# -- atomic directories ------------------------------------------------------------------------------------------
def _fsync(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:
            return  # some platforms cannot open directories; the rename is still atomic there
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not directory or exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and every directory entry to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath), directory=True)


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / "trainer_state.json").is_file()


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to ``target``; when the block ends without error, flush it to disk and
    rename it to ``target`` (replacing an earlier checkpoint there only once the new one is whole).

    On any error (a kill cannot be caught, but leaves only a hidden ``.tmp-`` directory) the temporary directory
    is removed and ``target`` is left as it was. An existing ``target`` that is not a checkpoint is never replaced.
    """
    target = Path(target)
    if target.exists() and not (target.is_dir() and (_is_checkpoint_dir(target) or not any(target.iterdir()))):
        raise CheckpointError(
            f"{target} exists and is not an rlhf_gym checkpoint; it is left untouched. Save to another path"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        fault_point("before-rename")
        _replace_directory(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_directory(tmp: Path, target: Path) -> None:
    parent = target.parent
    if not target.exists():
        os.rename(tmp, target)
        _fsync(parent, directory=True)
        return
    old = parent / f"{OLD_PREFIX}{target.name}-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        fault_point("swap")  # the old checkpoint is aside and whole, the new one whole but not yet in place
        os.rename(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(old, target)  # put the old one back (after a kill, recover_checkpoints does)
        raise
    try:
        _fsync(parent, directory=True)
        fault_point("replaced")
        shutil.rmtree(old)
    except OSError:
        pass  # the new checkpoint is in place; recover_checkpoints removes what is left of the old one


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_checkpoints(directory: str | os.PathLike[str]) -> list[str]:
    """Tidy what interrupted saves left in ``directory`` (a run's ``checkpoints/``); returns what was done.

    Temporary ``.tmp-*`` directories of processes that are gone are deleted (they never became checkpoints). An
    earlier checkpoint moved aside (``.old-<name>-*``) is put back when its replacement never arrived, else
    deleted.
    """
    directory = Path(directory)
    done: list[str] = []
    if not directory.is_dir():
        return done
    for entry in sorted(directory.iterdir()):
        for prefix in (TMP_PREFIX, OLD_PREFIX):
            if not entry.name.startswith(prefix):
                continue
            match = re.match(rf"^{re.escape(prefix)}(.+)-(\d+)-[0-9a-f]+$", entry.name)
            if match is None or (int(match.group(2)) != os.getpid() and _pid_alive(int(match.group(2)))):
                continue  # another live process is saving there
            name = match.group(1)
            if prefix == OLD_PREFIX and not (directory / name).exists() and (entry / MANIFEST).is_file():
                os.rename(entry, directory / name)
                done.append(f"restored {name} from an interrupted replacement")
            else:
                shutil.rmtree(entry, ignore_errors=True)
                done.append(f"removed {entry.name}, left by an interrupted save")
    return done


# -- manifest ----------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def write_manifest(path: str | os.PathLike[str], **info: Any) -> dict[str, Any]:
    """Record the size and SHA-256 of every file under ``path`` in ``path/manifest.json`` (written last)."""
    path = Path(path)
    files = {rel: {"size": (path / rel).stat().st_size, "sha256": _sha256(path / rel)}
             for rel in _files(path) if rel != MANIFEST}
    manifest = {"format": MANIFEST_FORMAT, **info, "files": files}
    with (path / MANIFEST).open("w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    return manifest


def verify_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Check ``path`` against its manifest; returns the manifest (None for a checkpoint older than manifests).

    Raises:
        CheckpointError: naming the first missing, truncated, changed or unexpected file, and what to do.
    """
    path = Path(path)
    advice = ("resume from another checkpoint (`rlhf-gym train --resume RUN_DIR` picks the newest intact one) or "
              "restore the file")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a directory written by Algorithm.save() or a "
                              f"run's checkpoints/step-N folder")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        state = path / "trainer_state.json"
        if state.is_file():
            with contextlib.suppress(ValueError, OSError):
                if json.loads(state.read_text()).get("format") == "rlhf_gym-checkpoint-v1":
                    warnings.warn(f"checkpoint {path} was written before checkpoints carried a manifest; its files "
                                  f"cannot be verified", stacklevel=2)
                    return None
            raise CheckpointError(f"checkpoint {path} is incomplete: its {MANIFEST} is missing; {advice}")
        raise CheckpointError(f"{path} is not an rlhf_gym checkpoint (no {MANIFEST}, no trainer_state.json); pass a "
                              f"directory written by Algorithm.save() or a run's checkpoints/step-N folder")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
        for entry in files.values():
            if not isinstance(entry["sha256"], str) or int(entry["size"]) < 0:
                raise ValueError("bad file entry")
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} is damaged ({type(exc).__name__}: {exc}); "
                              f"{advice}") from exc
    for rel, entry in files.items():
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} is missing; {advice}")
        size = file.stat().st_size
        if size != int(entry["size"]):
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} has {size} bytes, {entry['size']} were "
                                  f"written (truncated or overwritten); {advice}")
        if _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"checkpoint {path} is damaged: {rel} does not match its SHA-256 in {MANIFEST} "
                                  f"(its bytes changed after the save); {advice}")
    extra = [rel for rel in _files(path) if rel != MANIFEST and rel not in files]
    if extra:
        raise CheckpointError(f"checkpoint {path} holds {', '.join(extra[:3])}, which the save did not write; "
                              f"remove it (a checkpoint is loaded only as it was written)")
    return manifest


def find_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints in a run's ``checkpoints/`` directory, newest first (by the update count they hold)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: list[tuple[int, int, Path]] = []
    for entry in directory.iterdir():
        if not entry.is_dir() or entry.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            continue
        step = _STEP_NAME.match(entry.name)
        count = int(step.group(1)) if step else _recorded_updates(entry)
        found.append((count, 1 if step else 0, entry))
    return [p for _, _, p in sorted(found, key=lambda t: (t[0], t[1]), reverse=True)]


def _recorded_updates(path: Path) -> int:
    for name, key in ((MANIFEST, "num_updates"), ("trainer_state.json", "num_updates")):
        with contextlib.suppress(ValueError, OSError, TypeError, KeyError, AttributeError):
            return int(json.loads((path / name).read_text())[key])
    return -1


# -- trainer state -----------------------------------------------------------------------------------------------
def flatten_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into (tensors, JSON-able rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = meta["param_groups"]
    for group, current in zip(groups, optimizer.param_groups, strict=False):
        if "betas" in group and isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        # How the update is computed belongs to this process (a fused kernel may not exist on this device).
        for key in ("fused", "foreach", "capturable", "differentiable"):
            if key in current:
                group[key] = current[key]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_trainer_state(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # Two names may hold views of one tensor (an algorithm's extra state and a component it also keeps, say):
    # safetensors refuses shared storage, so every tensor after the first on a storage is written as a copy.
    seen: set[int] = set()
    unique: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        value = value.contiguous()
        ptr = value.untyped_storage().data_ptr() if value.numel() else 0
        unique[key] = value.clone() if ptr and ptr in seen else value
        seen.add(ptr)
    save_file(unique, str(path / "trainer_state.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps(meta, indent=1))


def load_trainer_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``trainer_state.*``; a missing or unreadable file is a :class:`CheckpointError` naming it."""
    path = Path(path)
    meta_path = path / "trainer_state.json"
    if not meta_path.exists():
        raise CheckpointError(
            f"{path} is not an rlhf_gym checkpoint (no trainer_state.json); pass a directory written by "
            f"Algorithm.save() or a run's checkpoints/step-N folder"
        )
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or not {"num_updates", "config", "optimizer"} <= set(meta):
            raise ValueError("not a trainer state")
    except (OSError, ValueError) as exc:
        raise CheckpointError(file_error_message(meta_path, exc, "checkpoint file")) from exc
    tensors_path = path / "trainer_state.safetensors"
    try:
        tensors = load_file(str(tensors_path))
    except Exception as exc:  # safetensors raises its own error type for damaged headers
        raise CheckpointError(file_error_message(tensors_path, exc, "checkpoint file")) from exc
    return tensors, meta


def save_failure(path: str | os.PathLike[str], exc: OSError) -> CheckpointError:
    """The :class:`CheckpointError` for a save that failed with ``exc`` (disk full, read-only, ...)."""
    return CheckpointError(write_error_message(path, exc, "save the checkpoint"))


# -- the state of an algorithm's components ----------------------------------------------------------------------
def _pack(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``value``; tensors go to ``tensors`` under ``key`` and leave a reference behind."""
    import numpy as np

    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
        return {"__ndarray__": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {"__dict__": [[_pack(k, f"{key}/k{i}", tensors), _pack(v, f"{key}/{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        packed = [_pack(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": packed} if isinstance(value, tuple) else packed
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {key!r}")


def _unpack(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_unpack(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_unpack(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in value["__dict__"]}
    return value


def _kind(obj: Any) -> str | None:
    """How a component's state is read and written, or None when it has no state the base knows how to save."""
    import random

    import numpy as np

    if isinstance(obj, (torch.nn.Module, torch.optim.Optimizer, type)):
        return None
    if isinstance(obj, torch.Generator):
        return "torch.Generator"
    if isinstance(obj, np.random.Generator):
        return "numpy.Generator"
    if isinstance(obj, np.random.RandomState):
        return "numpy.RandomState"
    if isinstance(obj, random.Random):
        return "random.Random"
    if callable(getattr(obj, "state", None)) and callable(getattr(obj, "load_state", None)):
        return "state"  # (tensors, values) pairs, as RolloutWorker and the batch samplers give
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return "state_dict"  # KL controllers, running moments, baselines, reward providers
    base = getattr(obj, "unwrapped", obj)
    if callable(getattr(base, "get_state", None)) and callable(getattr(base, "set_state", None)):
        return "env"  # an rlhf_gym vector env: prompt order and pass
    return None


def components_state(components: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON values) holding the state of every component (see :func:`_kind`), keyed by name."""
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, Any] = {}
    for name in sorted(components):
        obj, kind = components[name], _kind(components[name])
        key = f"components/{name}"
        if kind == "torch.Generator":
            state: Any = obj.get_state()
        elif kind == "numpy.Generator":
            state = obj.bit_generator.state
        elif kind == "numpy.RandomState":
            state = obj.get_state()
        elif kind == "random.Random":
            state = obj.getstate()
        elif kind == "state":
            state = tuple(obj.state())
        elif kind == "state_dict":
            state = obj.state_dict()
        elif kind == "env":
            state = getattr(obj, "unwrapped", obj).get_state()
        else:
            continue
        try:
            part: dict[str, torch.Tensor] = {}
            values[name] = {"kind": kind, "state": _pack(state, key, part)}
            tensors.update(part)
        except TypeError as exc:
            warnings.warn(f"the state of {name!r} ({type(obj).__name__}) is not saved with the checkpoint: {exc}; "
                          f"save it in extra_state()", stacklevel=3)
    return tensors, values


def restore_components(components: dict[str, Any], tensors: dict[str, torch.Tensor], values: dict[str, Any],
                       where: Path) -> None:
    """Load :func:`components_state`'s output back into ``components`` (built afresh by the algorithm)."""
    for name, obj in components.items():
        kind = _kind(obj)
        if kind is None:
            continue
        if name not in values:
            warnings.warn(f"checkpoint {where} holds no state for {name!r} ({type(obj).__name__}); it starts afresh, "
                          f"so the resumed run may differ from an unbroken one", stacklevel=3)
            continue
        entry = values[name]
        if entry.get("kind") != kind:
            raise CheckpointError(f"checkpoint {where}: {name!r} was saved as {entry.get('kind')}, is now {kind}")
        state = _unpack(entry["state"], tensors)
        if kind == "torch.Generator":
            obj.set_state(state)
        elif kind == "numpy.Generator":
            obj.bit_generator.state = state
        elif kind == "numpy.RandomState":
            obj.set_state(state)
        elif kind == "random.Random":
            obj.setstate(state)
        elif kind == "state":
            obj.load_state(*state)
        elif kind == "state_dict":
            obj.load_state_dict(state)
        else:
            getattr(obj, "unwrapped", obj).set_state(state)
