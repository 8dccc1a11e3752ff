"""Run folders read into plain records: what each run was and how it went.

    folders, skipped = find_runs(["runs"])   # run folders at any depth, and the arguments that hold none
    run = read_run(folders[0])              # a dict: see RUN_KEYS; RunError (the reason) when unreadable

A run folder is ``<logdir>/<name>/`` as main.py writes it: ``args.json`` (the resolved options, and since
the facts were logged a ``"facts"`` dict), ``metrics.csv`` (one row per epoch), ``final.json`` once it
finished, and optional logs (``filters/``, ``binarization_losses.json``, ...) that the figures read.

What a run was comes from facts, never from its name: the ``"facts"`` of its args.json where it has them
(family, variant, label, weights_binarized, binarized_convs, inputs_binarized, weight_binarizer,
weight_shift, activation_binarizer, backward), else its options (binaryWeight, binInputs, binLayers, binarizer,
weightShift, binActivation, backward), else the model registry's defaults for its ``model_def``
(``models.model_info``). A run whose model the registry does not know and whose args.json holds no facts
is skipped with that reason.

Weights kind of a run: ``fp`` (no binarized weight, no binarized input); ``wbin`` (binarized weights, real
inputs); ``fbin`` (every binarized conv also has a binarized input); ``hybrid`` (only some of them do: the
model's own choice in a hybrid variant, or a ``--binInputs`` that misses some ``--binLayers``); ``abin``
(real weights, binarized inputs).

A run's configuration (:func:`configuration`) is its args.json (options and facts) less its seed and less
what cannot change its results (NOT_CONFIGURATION, the one list of them, each with its reason). Runs of equal
configurations form a group (:func:`config_groups`) whose runs differ only in their seed; two runs of one group
with the same seed are duplicates: the first (in the order given) counts, the others are flagged.
"""

import csv
import hashlib
import json
import math
import os

import datasets
import models

__all__ = ["RunError", "RUN_KEYS", "DATASET_NAMES", "FAMILY_NAMES", "find_runs", "read_json", "read_metrics",
           "run_facts", "weights_kind", "compact_layers", "read_run", "run_file", "has_file", "NOT_CONFIGURATION",
           "INERT_OPTIONS", "DATA_KEYS", "configuration", "config_groups", "settings_of", "settings_labels",
           "value_text"]

class _DatasetNames(dict):
    """dataset name or alias -> its display name, from the dataset registry (a name it does not know: itself)."""

    def __missing__(self, name):
        try:
            return datasets.record(name).display_name
        except ValueError:
            return name

    def get(self, name, default=None):
        return self[name]


class _FamilyNames(dict):
    """family id -> its display name, from the model registry (a family it does not know: the id)."""

    def __missing__(self, family):
        for name in models.list_models():
            info = models.model_info(name)
            if info.family == family:
                return info.family_label
        return family

    def get(self, family, default=None):
        return self[family]


WEIGHTS_NAMES = {"wbin": "WBin", "fbin": "FBin", "hybrid": "Hybrid", "abin": "ABin"}
RUN_KEYS = ("run", "folder", "dataset", "dataset_label", "model", "model_label", "family", "family_label",
            "variant", "weights", "weights_label", "binarizer", "bin_layers", "activation", "seed", "epochs",
            "epochs_done", "finished", "best_top1", "final_top1", "best_top5", "final_top5", "sec_per_epoch",
            "val_images", "metrics", "config", "config_id")
DATASET_NAMES = _DatasetNames()
FAMILY_NAMES = _FamilyNames()


def canonical_dataset(name):
    """The registry's name of a dataset given by name or alias (one dataset, one name); unknown: itself."""
    try:
        return datasets.record(name).name
    except ValueError:
        return name


class RunError(ValueError):
    """A run (or one of its files) that cannot be read; the message is the reason it is skipped."""


def find_runs(run_dirs):
    """``(run folders, skipped)``: the run folders in or under ``run_dirs`` (sorted, each once) and
    ``[{"path", "reason"}]`` for the arguments that are missing or hold no run."""
    found, seen, skipped = [], set(), []
    for root in run_dirs:
        if not os.path.exists(root):
            skipped.append({"path": root, "reason": "does not exist"})
            continue
        if not os.path.isdir(root):
            skipped.append({"path": root, "reason": "not a folder"})
            continue
        count = 0
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            if "args.json" in files or "metrics.csv" in files:
                dirs[:] = []  # filters/ and the like belong to this run
                count += 1
                key = os.path.realpath(folder)  # a run named twice (itself and its parent) is read once
                if key not in seen:
                    seen.add(key)
                    found.append(os.path.normpath(folder))
        if not count:
            skipped.append({"path": root, "reason": "no run folder (args.json or metrics.csv) in it"})
    return found, skipped


def read_json(path, what):
    """The JSON value of ``path``; RunError ("unreadable <what>: ...") when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"unreadable {what}: {exc}") from None


def _number(text):
    """A metrics.csv cell as a float; empty -> nan (an optional value not logged)."""
    return float(text) if text.strip() else math.nan


def _metrics_rows(reader):
    header = reader.fieldnames or []
    if "epoch" not in header or "val_top1" not in header:
        raise RunError("corrupt metrics.csv: no epoch and val_top1 columns in its header")
    by_epoch = {}
    for line, row in enumerate(reader, start=2):
        if None in row or None in row.values():  # more or fewer cells than the header names
            raise RunError(f"corrupt metrics.csv: line {line} has {len(header)} columns in its header "
                           f"but not in the row")
        try:
            values = {key: _number(value) for key, value in row.items()}
        except ValueError:
            raise RunError(f"corrupt metrics.csv: line {line} holds a value that is not a number") from None
        if math.isnan(values["epoch"]) or math.isnan(values["val_top1"]):
            raise RunError(f"corrupt metrics.csv: line {line} has no epoch or val_top1")
        by_epoch[int(values["epoch"])] = values
    return by_epoch


def read_metrics(path):
    """The rows of ``metrics.csv`` as ``{column: float}``, one per epoch (the last row of an epoch logged
    twice, after a resume), sorted by epoch. RunError when it is unreadable or has no row."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            by_epoch = _metrics_rows(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunError(f"unreadable metrics.csv: {exc}") from None
    if not by_epoch:
        raise RunError("no completed epoch in metrics.csv")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


# ------------------------------------------------------------------------------------------ run facts

def _registry_facts(model_def):
    """The registry's defaults for ``model_def``; None when the registry does not know it."""
    try:
        info = models.model_info(model_def)
    except ValueError:
        return None
    return {"family": info.family, "variant": info.variant, "label": info.label,
            "weights_binarized": info.binarized, "inputs_binarized": info.inputs_binarized,
            "activation_binarizer": info.activation, "bin_layers": info.bin_layers}


def run_facts(args):
    """The facts of a run, from its args dict: ``{"saved": args.json's facts, "model": the registry's
    defaults (or the saved facts where the registry lacks the model)}``.

    RunError when neither the registry nor args.json knows the run's model family and variant.
    """
    saved = args.get("facts") if isinstance(args.get("facts"), dict) else {}
    saved = {key: value for key, value in saved.items() if value is not None}
    model = _registry_facts(args["model_def"])
    if model is None:
        if not {"family", "variant"} <= saved.keys():
            raise RunError(f"model {args['model_def']!r} is not in the model registry and args.json holds no "
                           f"facts of it (family, variant)")
        model = {}
    return {"saved": saved, "model": model}


def _fact(facts, key, args=None, option=None, default=None):
    """A run fact: args.json's facts, else the option of args.json, else the registry's, else ``default``."""
    if key in facts["saved"]:
        return facts["saved"][key]
    if option is not None and args.get(option) is not None:
        return args[option]
    value = facts["model"].get(key)
    return default if value is None else value


def _binarized_convs(args, facts):
    """The convs with binarized weights: the facts', else --binLayers, else --binStart..--binEnd, else the
    model's default; None when none of these is known."""
    if isinstance(facts["saved"].get("binarized_convs"), list):
        return set(facts["saved"]["binarized_convs"])
    if args.get("binLayers") is not None:
        return set(args["binLayers"])
    if isinstance(args.get("binStart"), int) and isinstance(args.get("binEnd"), int):
        return set(range(args["binStart"], args["binEnd"] + 1))
    default = facts["model"].get("bin_layers")
    return None if default is None else set(default)


def _inputs(args, facts):
    """"none", "some" or "all": which binarized convs have a binarized input."""
    bin_inputs = args.get("binInputs")
    if bin_inputs is not None:  # chosen on the command line: compare with the binarized convs
        convs = _binarized_convs(args, facts)
        if not bin_inputs:
            return "none"
        if convs is not None:
            return "all" if convs <= set(bin_inputs) else "some"
    elif not _fact(facts, "inputs_binarized", default=False):
        return "none"
    # the model's own choice: a hybrid variant binarizes the inputs of some binarized convs, the others all
    return "some" if str(_fact(facts, "variant")).startswith("hybrid") else "all"


def weights_kind(args, facts=None):
    """fp, wbin, fbin, hybrid or abin for a run's args dict (see the module docstring); ``facts``: its
    :func:`run_facts` (computed when not given)."""
    facts = run_facts(args) if facts is None else facts
    binary_weight = _fact(facts, "weights_binarized", args, "binaryWeight", default=False)
    inputs = _inputs(args, facts)
    if not binary_weight:
        return "fp" if inputs == "none" else "abin"
    return {"all": "fbin", "some": "hybrid", "none": "wbin"}[inputs]


def compact_layers(layers):
    """[2, 3, 4, 5, 9] -> "2-5,9"."""
    layers, parts, i = sorted(set(int(x) for x in layers)), [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts) or "none"


def _bin_layers_text(args, weights):
    if weights in ("fp", "abin"):
        return "-"
    if args.get("binLayers") is not None:
        return compact_layers(args["binLayers"])
    if args.get("binStart") is not None and args.get("binEnd") is not None:
        return f"{args['binStart']}..{args['binEnd']}"
    return "default"


def _binarizer_text(args, facts):
    """The weight binarizer with the parts that change it: ``sign+wsd+ede`` for SD-BNN's weights (the
    shift and the EDE backward); ``dab`` for the original's setting (no shift, straight-through)."""
    parts = [str(_fact(facts, "weight_binarizer", args, "binarizer", default="dab"))]
    shift = _fact(facts, "weight_shift", args, "weightShift")
    backward = _fact(facts, "backward", args, "backward")
    parts += [str(shift)] if shift not in (None, "none") else []
    parts += [str(backward)] if backward not in (None, "ste") else []
    return "+".join(parts)


def _family_label(family, label, variant):
    """The family's display name: the registry's label without its variant, when that is more than the
    family's id; else FAMILY_NAMES; else the id."""
    suffix = f" {variant}"
    name = label[:-len(suffix)] if isinstance(label, str) and label.endswith(suffix) else None
    return name if name and name != family else FAMILY_NAMES.get(family, family)


def _weights_label(weights, variant):
    """"WBin", "FBin", "Hybrid", "Hybrid-v2" (a hybridv2 variant), ... for the method labels; None for fp."""
    if weights == "fp":
        return None
    if weights == "hybrid" and variant.startswith("hybrid") and variant != "hybrid":
        return f"Hybrid-{variant[len('hybrid'):]}"
    return WEIGHTS_NAMES[weights]


def describe(args):
    """What a run was, from its args dict: the model and method fields of a run record (see RUN_KEYS)."""
    facts = run_facts(args)
    family, variant = str(_fact(facts, "family")), str(_fact(facts, "variant"))
    label = _fact(facts, "label", default=f"{family} {variant}")
    weights = weights_kind(args, facts)
    binarized_inputs = weights in ("fbin", "hybrid", "abin")
    dataset = canonical_dataset(args["dataset"])
    return {"dataset": dataset, "dataset_label": DATASET_NAMES.get(dataset, dataset), "model": args["model_def"],
            "model_label": str(label), "family": family, "family_label": _family_label(family, label, variant),
            "variant": variant, "weights": weights, "weights_label": _weights_label(weights, variant),
            "binarizer": _binarizer_text(args, facts) if weights not in ("fp", "abin") else "-",
            "bin_layers": _bin_layers_text(args, weights),
            "activation": str(_fact(facts, "activation_binarizer", args, "binActivation", default="sign"))
            if binarized_inputs else "-"}


# ----------------------------------------------------------------------------------------- run record

def _read_args(folder):
    path = os.path.join(folder, "args.json")
    if not os.path.exists(path):
        raise RunError("missing args.json")
    args = read_json(path, "args.json")
    if not isinstance(args, dict):
        raise RunError("corrupt args.json: not a JSON object")
    missing = [key for key in ("dataset", "model_def") if not isinstance(args.get(key), str)]
    if missing:
        raise RunError(f"args.json lacks {', '.join(missing)}")
    return args


def _read_final(folder):
    """final.json as a dict; {} when the run has none (not finished)."""
    path = os.path.join(folder, "final.json")
    if not os.path.exists(path):
        return {}
    final = read_json(path, "final.json")
    if not isinstance(final, dict) or not all(isinstance(final.get(k), (int, float))
                                              for k in ("best_top1", "final_top1")):
        raise RunError("corrupt final.json: no best_top1 and final_top1 numbers")
    return final


def _outcome(rows, final):
    """How a run went: a finished run's final.json numbers as they are; else its last and best epochs."""
    def column(key):
        return [row[key] for row in rows if key in row and not math.isnan(row[key])]

    top5, seconds = column("val_top5"), column("seconds")
    return {"epochs_done": final.get("epochs_done", len(rows)), "finished": bool(final),
            "best_top1": final.get("best_top1", max(column("val_top1"))),
            "final_top1": final.get("final_top1", rows[-1]["val_top1"]),
            "best_top5": final.get("best_top5", max(top5) if top5 else None),
            "final_top5": final.get("final_top5", top5[-1] if top5 else None),
            "sec_per_epoch": sum(seconds) / len(seconds) if seconds else None,
            "val_images": final.get("val_images"), "metrics": rows}


def read_run(folder):
    """One run folder -> a run record: a dict of RUN_KEYS (``metrics``: the metrics.csv rows).

    RunError (the reason to skip it) when args.json or metrics.csv is missing, corrupt or empty,
    final.json is corrupt, or neither the registry nor args.json knows the run's model.
    """
    args = _read_args(folder)
    if not os.path.exists(os.path.join(folder, "metrics.csv")):
        raise RunError("missing metrics.csv")
    rows = read_metrics(os.path.join(folder, "metrics.csv"))
    final = _read_final(folder)
    run = {"run": str(args.get("name") or os.path.basename(os.path.abspath(folder))), "folder": folder}
    run.update(describe(args))
    run.update(seed=args.get("manualSeed"), epochs=args.get("epochs"))
    run.update(_outcome(rows, final))
    run["config"] = configuration(args, run["weights"])
    run["config_id"] = _config_id(run["config"])
    return run


def run_file(run, name):
    """The path of the log file (or folder) ``name`` of a run, e.g. ``"filters/layers.json"``."""
    return os.path.join(run["folder"], *name.rstrip("/").split("/"))


def has_file(run, name):
    """Whether a run logged ``name``: a file, or (``name`` ending in "/") a folder with something in it."""
    path = run_file(run, name)
    if name.endswith("/"):
        return os.path.isdir(path) and bool(os.listdir(path))
    return os.path.isfile(path)


# -------------------------------------------------------------------------------------- configurations

# What in args.json is not part of a run's configuration, and why: where a run wrote, how fast it went,
# what it measured on the side, and aliases of options recorded in their resolved form. Keys under "facts"
# are named "facts.<key>". Everything else in args.json is the configuration: two runs that differ in any
# of it are never pooled.
NOT_CONFIGURATION = {
    "manualSeed": "the seed: the runs of one configuration differ in it",
    "name": "where the run logs", "logdir": "where the run logs", "store": "where the checkpoints go",
    "resume": "where a run continued from (a resumed run is the same run)",
    "start_epoch": "where a resumed run continued from", "overwrite": "whether an older run was replaced",
    "allowChange": "a permission of one resume command, not part of the recipe",
    "evaluate": "an evaluation-only command", "testOnly": "alias of evaluate",
    "summary": "a tool command (prints the model and exits)", "export": "a tool command (writes an export)",
    "packed": "runs an export (evaluation only)",
    "workers": "data-loading processes", "device": "where it ran", "cuda": "alias of device",
    "ngpus": "replaced by torchrun; facts.world_size counts the processes",
    "printfreq": "progress lines", "verbose": "progress lines", "tensorboard": "event files",
    "saveEvery": "how often a checkpoint is written", "testbatchsize": "evaluation batch (eval mode: same outputs)",
    "cachemode": "decoded-image cache of the same pixels", "cacheDir": "where that cache lies",
    "channelsLast": "memory layout", "calculateBinarizationLosses": "a measurement after training",
    "calculateWeightBinarizationLosses": "a measurement after training",
    "lr": "alias of maxlr (resolved into it)", "bnnModel": "alias of --binarizer bnn (resolved into it)",
    "binStart": "resolved into binLayers", "binEnd": "resolved into binLayers",
    "data_dir": "where the data lies: facts.data_fingerprint names the data (data_dir counts where it is not logged)",
    "facts.code_version": "the code's git version (a recipe stays one across commits)",
    "facts.label": "display name", "facts.model_def": "same as model_def", "facts.dataset": "same as dataset",
    "facts.inpsize": "same as inpsize",
}
# Options that a kind of run records but never uses (its weights or inputs are not binarized): left out of
# the configuration of such runs, so that e.g. two full-precision runs are not told apart by --binarizer.
_WEIGHT_OPTIONS = ("binarizer", "weightShift", "binLayers", "facts.weight_binarizer", "facts.weight_shift")
_INPUT_OPTIONS = ("binActivation", "facts.activation_binarizer")
_BACKWARD_OPTIONS = ("backward", "edeTmin", "edeTmax", "facts.backward")
INERT_OPTIONS = {"fp": _WEIGHT_OPTIONS + _INPUT_OPTIONS + _BACKWARD_OPTIONS, "abin": _WEIGHT_OPTIONS,
                 "wbin": _INPUT_OPTIONS, "fbin": (), "hybrid": ()}
# The keys of a configuration that name its data (the table's columns), not its recipe.
DATA_KEYS = ("dataset", "data_dir", "nClasses", "facts.data_fingerprint", "facts.num_classes", "facts.in_channels")


def configuration(args, weights=None):
    """A run's configuration from its args dict: ``{option or "facts.<key>": value}`` (see NOT_CONFIGURATION
    and INERT_OPTIONS); ``weights``: its :func:`weights_kind` (computed when not given)."""
    weights = weights_kind(args) if weights is None else weights
    facts = args.get("facts") if isinstance(args.get("facts"), dict) else {}
    config = {key: value for key, value in args.items() if key != "facts"}
    config.update({f"facts.{key}": value for key, value in facts.items()})
    config["dataset"] = canonical_dataset(args.get("dataset"))  # one dataset, one name
    if facts.get("data_fingerprint") is None:  # nothing names the data but its folder
        config["data_dir"] = args.get("data_dir")
        ignored = set(NOT_CONFIGURATION) - {"data_dir"}
    else:
        ignored = set(NOT_CONFIGURATION)
    ignored |= set(INERT_OPTIONS.get(weights, ()))
    return {key: value for key, value in sorted(config.items()) if key not in ignored}


def _config_id(config):
    """8 hex digits naming a configuration (equal configurations, equal ids)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def config_groups(runs):
    """The runs grouped by configuration, in the order of their first run: ``[{"config_id", "config", "runs":
    [one run per seed, the first of each], "duplicates": [(run, the run of its seed that counts)]}]``."""
    groups = {}
    for run in runs:
        group = groups.setdefault(run["config_id"], {"config_id": run["config_id"], "config": run["config"],
                                                     "runs": [], "duplicates": [], "_seeds": {}})
        kept = group["_seeds"].get(_seed_key(run["seed"]))
        if kept is None:
            group["_seeds"][_seed_key(run["seed"])] = run
            group["runs"].append(run)
        else:
            group["duplicates"].append((run, kept))
    for group in groups.values():
        del group["_seeds"]
    return list(groups.values())


def _seed_key(seed):
    return json.dumps(seed, sort_keys=True, default=str)


# display names of the configuration keys the method and model columns show already
_METHOD_KEYS = {"model_def", "binaryWeight", "binarizer", "weightShift", "binActivation", "backward", "binInputs",
                "family", "variant", "weights_binarized", "binarized_linears", "weight_binarizer", "weight_shift",
                "inputs_binarized", "binarized_input_convs", "activation_binarizer"}


def value_text(value):
    """A configuration value as short text: [2, 3, 4] -> "2-4", None -> "none", True -> "yes"."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return compact_layers(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def settings_of(group):
    """``{name: text}``: a group's configuration as the settings a reader compares: options by their name,
    facts by theirs where no option has it, binarized layers as "bin layers" (absent for real weights);
    the data keys (DATA_KEYS) are left out."""
    config, run = group["config"], group["runs"][0]
    shown = {}
    for key in sorted(config, key=lambda k: (k.startswith("facts."), k)):  # options first, then facts
        name = key[len("facts."):] if key.startswith("facts.") else key
        if key in DATA_KEYS or key in ("binLayers", "facts.binarized_convs") or name in shown:
            continue
        shown[name] = value_text(config[key])
    if run["bin_layers"] != "-":
        shown["bin layers"] = run["bin_layers"]
    return shown


_WHERE_PRESENT = {"bin layers"}  # absent where the method has none: compared and named only where present


def _varying(settings, method_too):
    """The names whose text differs between the ``settings`` dicts (absent counts as a value, except for
    the names of _WHERE_PRESENT)."""
    names = {name for shown in settings for name in shown}
    if not method_too:
        names -= _METHOD_KEYS
    return {name for name in names
            if len({shown.get(name, "–") for shown in settings if name in shown or name not in _WHERE_PRESENT}) > 1}


def settings_labels(groups, kind=None):
    """``{config_id: label}``: for each group the settings in which groups differ, as "epochs=1, inpsize=8".

    A setting is named when it differs between any two groups, the method's own settings excepted (the
    method and model say them); with ``kind`` (a function of a group, e.g. its method and model family),
    also when it differs between two groups of one kind, the method's settings included. A setting a group
    lacks reads "–"."""
    settings = {group["config_id"]: settings_of(group) for group in groups}
    everywhere = _varying(list(settings.values()), method_too=False)
    by_kind = {}
    for group in groups if kind is not None else ():
        by_kind.setdefault(kind(group), []).append(settings[group["config_id"]])
    local = {key: _varying(members, method_too=True) for key, members in by_kind.items()}
    labels = {}
    for group in groups:
        shown = settings[group["config_id"]]
        named = everywhere | (local[kind(group)] if kind is not None else set())
        names = [name for name in sorted(named) if name in shown or name not in _WHERE_PRESENT]
        labels[group["config_id"]] = ", ".join(f"{name}={shown.get(name, '–')}" for name in names)
    return labels
