"""Deterministic, stratified splits that depend only on file names and a seed.

The order inside each class comes from SHA-256 of "<seed>/<key>" (key = "<class>/<file name>"), not from
numpy's or Python's random streams (numpy does not promise stable `Generator` streams across versions,
Python salts `hash`) and not from the order a filesystem lists files in. So the same files give the same
split on every machine and in every run.
"""
import hashlib

import numpy as np

SEED = 20180312  # fixed seed of every split in this package


def _rank(seed, key):
    return hashlib.sha256(f"{seed}/{key}".encode("utf-8")).hexdigest()


def stratified_folds(keys, labels, nfolds, seed=SEED):
    """Fold index 0..nfolds-1 per item: each class is ordered by hash and dealt round-robin.

    Class c starts dealing at fold c % nfolds, so per class the folds differ in size by at most one and the
    totals over all classes are balanced as well (TU-Berlin: 6,667 / 6,667 / 6,666 per fold).
    """
    labels = np.asarray(labels, dtype=np.int64)
    folds = np.empty(len(keys), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ordered = sorted(members, key=lambda i: _rank(seed, keys[i]))
        for position, i in enumerate(ordered):
            folds[i] = (position + int(c)) % nfolds
    return folds
