"""uint8 image cache on disk (`cachemode=True`): every file is decoded and resized once, then memory-mapped.

A cache is one folder `<cache_dir>/<tag>-<key>/` holding `data.u8` (all images, flat uint8), `index.npy`
(offset, C, H, W per file) and `meta.json`. The key is a SHA-256 of the format version, the data root, the
Decode settings and each file's relative path, size and mtime: a changed file list, a changed file or other
resize settings give a new key, so a new cache is built and the stale one of the same tag is deleted.
The folder is built under a temporary name and renamed into place as the very last step, so a folder under
its final name is always complete; an interrupted build leaves a `.tmp-*` folder that the next build on the
same host removes once its process is gone.
"""
import hashlib
import json
import os
import shutil
import socket
from dataclasses import asdict

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .folder import bad_image_error

VERSION = 1
KEY_CHARS = 24


def default_cache_dir(data_dir):
    """`<data_dir>/.dabnet_cache` when that can be written, else `~/.cache/dabnet`."""
    here = os.path.join(data_dir, ".dabnet_cache")
    if os.access(here if os.path.isdir(here) else data_dir, os.W_OK):
        return here
    return os.path.join(os.path.expanduser("~"), ".cache", "dabnet")


def cache_key(root, files, decode):
    """Hex digest of everything that decides the cached bytes."""
    h = hashlib.sha256(json.dumps({"version": VERSION, "root": os.path.abspath(root),
                                   "decode": asdict(decode)}, sort_keys=True).encode())
    for f in files:
        st = os.stat(os.path.join(root, f))
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class UInt8Cache:
    """Read side of a finished cache; opens the memmap lazily, so it pickles as a path (DataLoader workers)."""

    def __init__(self, path):
        self.path = path
        self.index = np.load(os.path.join(path, "index.npy"))
        with open(os.path.join(path, "meta.json")) as f:
            self.meta = json.load(f)
        self._data = None

    @property
    def bad(self):
        """Files that could not be decoded when the cache was built: index -> reason."""
        return {int(i): why for i, why in self.meta["bad"].items()}

    def __getitem__(self, row):
        offset, c, h, w = (int(v) for v in self.index[row])
        if self._data is None:
            self._data = np.memmap(os.path.join(self.path, "data.u8"), dtype=np.uint8, mode="r")
        return torch.from_numpy(np.array(self._data[offset:offset + c * h * w])).view(c, h, w)

    def __getstate__(self):
        return {**self.__dict__, "_data": None}


def _final_dir(cache_dir, tag, key):
    return os.path.join(cache_dir, f"{tag}-{key[:KEY_CHARS]}")


def open_cache(cache_dir, tag, key):
    """The finished cache for this key, or None."""
    path = _final_dir(cache_dir, tag, key)
    try:
        with open(os.path.join(path, "meta.json")) as f:
            if json.load(f)["key"] != key:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return UInt8Cache(path)


class _DecodeRows(Dataset):
    """(index, tensor, None) or (index, None, reason) per file: decoding runs in DataLoader workers."""

    def __init__(self, root, files, rows, decode):
        self.root, self.files, self.rows, self.decode = root, files, rows, decode

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, k):
        i = self.rows[k]
        try:
            return i, self.decode(os.path.join(self.root, self.files[i])), None
        except Exception as e:
            return i, None, f"{type(e).__name__}: {e}"


def _process_gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _clean(cache_dir, tag, keep):
    """Delete stale caches of this tag and temporary folders left by dead builds on this host."""
    host = socket.gethostname()
    for name in os.listdir(cache_dir):
        path = os.path.join(cache_dir, name)
        if name.startswith(f".tmp-{tag}-"):   # .tmp-<tag>-<key>-<pid>@<host>
            pid, _, owner = name[len(f".tmp-{tag}-") + KEY_CHARS + 1:].partition("@")
            if owner == host and pid.isdigit() and _process_gone(int(pid)):
                shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(f"{tag}-") and len(name) == len(tag) + 1 + KEY_CHARS and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def build_cache(cache_dir, tag, key, root, files, decode, sizes, *, skip_bad, bad=None, workers=None):
    """Decode every file not in `bad` once into a new cache; returns its UInt8Cache.

    sizes[i] = (w, h) from the file header (probe_all) fixes every image's place in the flat file before
    decoding starts. A file that fails to decode raises DataError unless skip_bad (then it is recorded in
    meta.json as bad). On any error the temporary folder is removed, and so is cache_dir if this call made it.
    """
    bad = dict(bad or {})
    rows = [i for i in range(len(files)) if i not in bad]
    channels = 1 if decode.mode == "L" else 3
    shapes = {i: (channels, *decode.out_hw(*sizes[i])) for i in rows}
    offsets, total = {}, 0
    for i in rows:
        offsets[i] = total
        total += int(np.prod(shapes[i]))
    index = np.zeros((len(files), 4), dtype=np.int64)
    for i in rows:
        index[i] = (offsets[i], *shapes[i])

    made_dir = not os.path.isdir(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".tmp-{tag}-{key[:KEY_CHARS]}-{os.getpid()}@{socket.gethostname()}")
    final = _final_dir(cache_dir, tag, key)
    try:
        _clean(cache_dir, tag, keep=final)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        data = np.memmap(os.path.join(tmp, "data.u8"), dtype=np.uint8, mode="w+", shape=(max(total, 1),))
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if len(rows) >= 256 else 0
        loader = DataLoader(_DecodeRows(root, files, rows, decode), batch_size=None, num_workers=workers)
        for i, x, why in tqdm(loader, total=len(rows), desc=f"caching {tag}", unit="img", disable=None):
            if why is None and tuple(x.shape) != shapes[i]:
                why = f"decoded shape {tuple(x.shape)} differs from header shape {shapes[i]}"
            if why is not None:
                if not skip_bad:
                    raise bad_image_error(os.path.join(root, files[i]), why, 1)
                bad[i] = why
                continue
            data[offsets[i]:offsets[i] + x.numel()] = x.reshape(-1).numpy()
        data.flush()
        del data
        np.save(os.path.join(tmp, "index.npy"), index)
        meta = {"key": key, "version": VERSION, "root": os.path.abspath(root), "decode": asdict(decode),
                "files": len(files), "bad": {str(i): why for i, why in sorted(bad.items())}}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f)
        try:
            os.rename(tmp, final)   # atomic: the final name appears only for a complete cache
        except OSError:             # another process finished the same cache first; use that one
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if made_dir:
            try:
                os.rmdir(cache_dir)
            except OSError:
                pass
        raise
    return UInt8Cache(final)
