"""opts: every flag of the original code parses here in each spelling and value form it accepted, every
choice it offered either works or is refused with a clear one-line error, the original's run-script
command lines resolve to their binarized models (the CIFAR ones also run one epoch), the defaults resolve
as documented, and ``to_argv`` turns resolved options back into flags that resolve alike."""

import pytest

import binarize
import main
import models
import models.__main__ as models_cli
import models.sdbnn
import opts
from launch import build
from original_commands import LINES, argv_for, classes_of, dataset_of, tiny_data

# (argv fragment, the attribute it sets and the value expected) for every original flag and value form
ORIGINAL_FORMS = [
    (["--dataset", "tuberlin"], "dataset", "tuberlin"),
    (["--dataset=sketchy"], "dataset", "sketchy"),  # run.sh's --dataset='sketchy' after the shell's quoting
    (["--dataset=sketchyrecognition"], "dataset", "sketchyrecognition"),
    (["--dataset", "cifar10"], "dataset", "cifar10"),
    (["--dataset", "cifar100"], "dataset", "cifar100"),
    (["--dataset", "imagenet12"], "dataset", "imagenet12"),
    (["--nClasses", "250"], "nClasses", 250),
    (["--nClasses=125"], "nClasses", 125),
    (["--data_dir", "../data/tuberlin"], "data_dir", "../data/tuberlin"),
    (["--verbose"], "verbose", True),
    (["--workers", "8"], "workers", 8),
    (["--epochs", "600"], "epochs", 600),
    (["--batch-size", "512"], "batch_size", 512),
    (["--batch-size=256"], "batch_size", 256),
    (["--testbatchsize", "16"], "testbatchsize", 16),
    (["--tenCrop"], "tenCrop", True),
    (["--printfreq", "200"], "printfreq", 200),
    (["--learningratescheduler", "decayschedular"], "learningratescheduler", "decayschedular"),
    (["--decayinterval", "50"], "decayinterval", 50),
    (["--decaylevel", "2"], "decaylevel", 2.0),
    (["-criterion", "nllLoss"], "criterion", "nllloss"),
    (["-criterion=nllLoss"], "criterion", "nllloss"),
    (["--optimType", "adam"], "optimType", "adam"),
    (["--optimType", "sgd"], "optimType", "sgd"),
    (["--optimType", "adagrad"], "optimType", "adagrad"),
    (["--optimType", "adamax"], "optimType", "adamax"),
    (["--optimType", "adadelta"], "optimType", "adadelta"),
    (["--maxlr", "5e-4"], "maxlr", 5e-4),
    (["--minlr", "1e-5"], "minlr", 1e-5),
    (["--lr", "0.01"], "maxlr", 0.01),
    (["--nesterov"], "nesterov", True),
    (["--momentum", "0.9"], "momentum", 0.9),
    (["--weightDecay", "0"], "weightDecay", 0.0),
    (["--inpsize", "225"], "inpsize", 225),
    (["--weight_init"], "weight_init", False),  # store_false: passing it turns the inits off
    (["--name", "tuberlin_sketchanetwbin_dualbin"], "name", "tuberlin_sketchanetwbin_dualbin"),
    (["--cachemode"], "cachemode", True),
    (["--cachemode", "True"], "cachemode", True),
    (["--cachemode=False"], "cachemode", False),
    (["--cuda", "True"], "device", "cuda"),
    (["--cuda=False"], "device", "cpu"),
    (["--manualSeed", "123"], "manualSeed", 123),
    (["--ngpus", "1"], "ngpus", 1),
    (["--logdir", "../logs/"], "logdir", "../logs/"),
    (["--tensorboard", "True"], "tensorboard", True),
    (["--tensorboard=False"], "tensorboard", False),
    (["--tensorboard"], "tensorboard", True),
    (["--testOnly", "True", "--resume", "x.pth"], "evaluate", True),
    (["--testOnly", "False"], "evaluate", False),
    (["--start-epoch", "0"], "start_epoch", 0),
    (["--start-epoch", "3", "--resume", "x.pth"], "start_epoch", 3),
    (["--pretrained", "--pretrained_file", "x.pth"], "pretrained", True),
    (["--pretrained_file", ""], "pretrained_file", ""),
    (["--resume", ""], "resume", ""),
    (["--store", ""], "store", ""),
    (["--evaluate", "--resume", "x.pth"], "evaluate", True),
    (["--binStart", "2", "--binEnd", "7"], "binLayers", [2, 3, 4, 5, 6, 7]),
    (["--binStart=2", "--binEnd=100"], "binEnd", 8),  # clipped to the model's 8 convs
    (["--binaryWeight"], "binaryWeight", True),
    (["--bnnModel"], "binarizer", "bnn"),
    (["--calculateBinarizationLosses"], "calculateBinarizationLosses", True),
]


@pytest.mark.parametrize("fragment,attr,value", ORIGINAL_FORMS, ids=[" ".join(f[0]) for f in ORIGINAL_FORMS])
def test_every_original_flag_form_parses(fragment, attr, value):
    args = opts.parse(["--model_def", "sketchanetwbin"] + fragment)
    assert getattr(args, attr) == value


def test_every_original_model_name_is_a_choice():
    original = ["alexnet", "alexnetwbin", "alexnetfbin", "alexnethybrid", "alexnethybridv2", "sketchanet",
                "sketchanetwbin", "sketchanetfbin", "sketchanethybrid", "sketchanethybridv2", "resnet18",
                "resnetwbin18", "resnetfbin18", "resnethybrid18", "resnethybridv218", "resnethybridv318",
                "googlenet", "googlenetwbin", "googlenetfbin", "squeezenet", "squeezenetwbin", "squeezenetfbin",
                "squeezenethybrid", "squeezenethybridv2", "squeezenethybridv3", "mobilenet", "nin",
                "vgg16_bncifar", "densenet", "bincifar", "bincifarfbin"]
    assert len(original) == 31
    for name in original:
        assert opts.parse(["--model_def", name]).model_def == name
    assert set(original) <= set(models.list_models())


@pytest.mark.parametrize("choice", ["tripletmargin", "mse", "hingeEmbedding", "kldiv"])
def test_the_originals_dead_criteria_are_refused_in_one_line(choice, capsys):
    with pytest.raises(SystemExit) as exc:
        opts.parse(["-criterion", choice])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and choice in err and "use nllLoss or crossentropy" in err


@pytest.mark.parametrize("fragment,message", [
    (["--pretrained"], "--pretrained needs --pretrained_file"),
    (["--evaluate"], "needs --resume PATH or --pretrained_file"),
    (["--testOnly", "True"], "needs --resume PATH or --pretrained_file"),
])
def test_original_flags_that_need_a_file_say_so(fragment, message):
    with pytest.raises(opts.UsageError, match=message):
        opts.parse(fragment)


def test_crossentropy_is_read_and_takes_label_smoothing():
    args = opts.parse(["--criterion", "crossentropy", "--labelSmoothing", "0.1"])
    assert (args.criterion, args.labelSmoothing) == ("crossentropy", 0.1)
    with pytest.raises(opts.UsageError, match="--labelSmoothing needs -criterion crossentropy"):
        opts.parse(["--labelSmoothing", "0.1"])


CHANNELS = {"cifar10": 3, "cifar100": 3, "imagenet12": 3}


@pytest.mark.parametrize("label,line", LINES, ids=[label for label, _ in LINES])
def test_original_line_parses_and_builds_its_binarized_model(label, line, tmp_path):
    args = opts.parse(argv_for(line, tmp_path, 1, tmp_path / "logs", tmp_path / "ckpt"))
    assert args.binaryWeight and args.binarizer == "dab" and args.learningratescheduler == "decayschedular"
    assert args.optimType == "adam" and args.epochs == 1 and args.nClasses == classes_of(line)
    if dataset_of(line).startswith("cifar"):  # the original ignored --inpsize 225 for CIFAR's 32 px images
        assert args.inpsize == 32
    if args.model_def.startswith("alexnet"):  # 62M parameters: check the pieces, skip building it here
        models.check_input_size(args.model_def, args.inpsize)
        return
    model = build.build_network(args, args.nClasses, CHANNELS.get(dataset_of(line), 1))
    num_convs = models.model_info(args.model_def).num_convs
    start, end = (int(v) for v in (line.split("--binStart=")[1].split()[0], line.split("--binEnd=")[1].split()[0]))
    assert [i for i, *_ in binarize.binarized_layers(model)] == list(range(start, min(end, num_convs) + 1))


CIFAR_LINES = [(label, line) for label, line in LINES if dataset_of(line).startswith("cifar")]


@pytest.mark.parametrize("label,line", CIFAR_LINES, ids=[label for label, _ in CIFAR_LINES])
@pytest.mark.slow
def test_original_cifar_line_runs_one_epoch(label, line, tmp_path, capsys):
    data = tiny_data(dataset_of(line), classes_of(line), str(tmp_path / "data"))
    assert main.main(argv_for(line, data, 1, tmp_path / "logs", tmp_path / "ckpt")) == 0
    out = capsys.readouterr().out
    assert "final val top1" in out and "--inpsize 225 does not apply" in out


def test_defaults_resolve_to_a_dab_binarized_sketchanet_on_digits():
    args = opts.parse([])
    assert (args.dataset, args.model_def, args.binaryWeight, args.binarizer) == ("digits", "sketchanetwbin", True,
                                                                                  "dab")
    assert (args.binStart, args.binEnd, args.inpsize) == (2, 7, 225)
    assert (args.name, args.logdir, args.store) == (None, None, None)  # the folder plan resolves them
    assert opts.parse(["--model_def", "sketchanet"]).binaryWeight is False
    assert opts.parse(["--model_def", "resnetwbin18"]).binLayers == list(range(2, 22))   # 2..100, clipped
    assert opts.parse(["--model_def", "sketchanet", "--binaryWeight"]).binaryWeight is True
    assert opts.parse(["--model_def", "sketchanetwbin", "--no-binaryWeight"]).binaryWeight is False
    assert opts.parse(["--bnnModel"]).binarizer == "bnn"


@pytest.mark.parametrize("argv,size,noted", [
    (["--dataset", "cifar10", "--model_def", "bincifar", "--inpsize", "225"], 32, True),
    (["--dataset", "cifar100", "--model_def", "resnet20_1w1a"], 32, False),   # its own default is 32
    (["--dataset", "cifar10", "--model_def", "nin"], 32, False),
    (["--dataset", "tuberlin", "--model_def", "nin", "--inpsize", "30"], 30, False),
    (["--model_def", "sketchanet"], 225, False),
])
def test_cifar_is_read_at_its_native_size_with_a_note_when_asked_otherwise(argv, size, noted):
    notes = []
    args = opts.parse(argv, notes=notes)
    assert args.inpsize == size
    assert bool(notes) == noted
    if noted:
        assert notes == [f"note: --inpsize 225 does not apply to {args.dataset} (its images are 32x32); using 32, "
                         f"as the original did"]


ROUND_TRIPS = [
    [],
    ["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn", "--epochs", "5", "--lr", "0.1", "--cuda", "False"],
    ["--model_def", "birealnet18", "--binarizer", "sdbnn", "--weightBackward", "ste", "--actBackward", "approxsign"],
    ["--model_def", "birealnet18", "--binarizer", "sdbnn", "--no-binaryWeight", "--actBackward", "approxsign"],
    ["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn", "--binInputs", "none", "--edeTmax", "5"],
    ["--model_def", "resnet20_1w1a", "--actBackward", "ede", "--edeTmin", "0.01", "--binarizer", "xnor"],
    ["--model_def", "sketchanet"],
    ["--model_def", "birealnet18", "--backward", "ede"],
    ["--model_def", "sketchanethybrid", "--binInputs", "none", "--binLayers", "2-4,6", "--no-tensorboard"],
    ["--model_def", "sketchanetwbin", "--no-binaryWeight", "--weight_init", "--testOnly", "--resume", "x.pth"],
    ["--dataset", "cifar10", "--model_def", "bincifar", "--inpsize", "225", "--bnnModel", "--binStart", "3"],
    ["--model_def", "nin", "--binaryWeight", "--weightShift", "none", "--name", "sweep/a", "--store", "",
     "--criterion", "crossentropy", "--labelSmoothing", "0.1", "--cachemode", "--nesterov"],
]


@pytest.mark.parametrize("argv", ROUND_TRIPS, ids=lambda argv: " ".join(argv) or "defaults")
def test_to_argv_gives_flags_that_resolve_to_the_same_options(argv):
    first = vars(opts.parse(argv))
    flags = opts.to_argv(first)
    assert resolved(vars(opts.parse(flags))) == resolved(first)
    assert not set(opts.DERIVED) & {f.lstrip("-").replace("-", "_") for f in flags if f.startswith("-")}
    # what a run records (args.json: the options plus facts and the resolved folders) converts alike
    recorded = dict(first, facts={"family": "x"}, name=first["name"] or "n", logdir="runs", store="s")
    again = resolved(vars(opts.parse(opts.to_argv(recorded))))
    assert again == resolved(dict(first, name=recorded["name"], logdir="runs", store="s"))


def resolved(options):
    """The options without the aliases whose value went into another option (--lr into maxlr, ...)."""
    return {k: v for k, v in options.items() if k not in ("lr", "cuda", "testOnly", "bnnModel")}


def test_to_argv_leaves_out_what_changed_options_make_meaningless():
    # The hybrid planner keeps a run's recipe and changes its binarized inputs: with none left, the activation
    # options it had would be refused by parse, so they are not written.
    source = vars(opts.parse(["--model_def", "resnet20_1w1a", "--binarizer", "dab", "--binActivation", "asd",
                              "--actBackward", "ede", "--weightShift", "wsd"]))
    flags = opts.to_argv(dict(source, binInputs=[]))
    assert "--binActivation" not in flags and "--actBackward" not in flags and "--edeTmin" not in flags
    again = vars(opts.parse(flags))
    assert (again["binInputs"], again["actBackward"], again["weightShift"], again["weightBackward"]) == \
        ([], None, "wsd", "ste")


# ------------------------------------------------------------------ a backward rule per binarized part

def _rules(argv):
    """The weight and input binarizers of the network ``argv`` builds, as sets of (class, rule[, shift])."""
    args = opts.parse(argv)
    model = build.build_network(args, 10, 3)
    weights = {(type(b).__name__, b.surrogate.name, b.shift is not None) for *_, b in binarize.binarized_layers(model)}
    inputs = {(type(b).__name__, b.surrogate.name) for *_, b in binarize.input_binarizers(model)}
    return weights, inputs, opts.uses_ede(vars(args))


SDBNN_IMAGENET = ["--model_def", "birealnet18", "--binarizer", "sdbnn", "--actBackward", "approxsign"]


@pytest.mark.parametrize("argv,weights,inputs,ede", [
    # SD-BNN's CIFAR recipe: EDE for both parts
    (["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn"], {("Sign", "ede", True)}, {("ASD", "ede")}, True),
    # its ImageNet Bi-Real recipe: clipped STE on the WSD-shifted weight, ApproxSign on the ASD-shifted activation
    (SDBNN_IMAGENET + ["--weightBackward", "ste"], {("Sign", "ste", True)}, {("ASD", "approxsign")}, False),
    (SDBNN_IMAGENET + ["--no-binaryWeight"], set(), {("ASD", "approxsign")}, False),  # its stage 1
    (["--model_def", "resnet20_1w1a", "--binarizer", "sign", "--weightBackward", "ede"], {("Sign", "ede", False)},
     {("BinActive", "ste")}, True),
    (["--model_def", "sketchanetfbin", "--actBackward", "ede"], {("DAB", "ste", False)}, {("BinActive", "ede")}, True),
    (["--model_def", "sketchanetfbin", "--backward", "ede", "--actBackward", "ste"], {("DAB", "ede", False)},
     {("BinActive", "ste")}, True),  # an explicit part flag wins over --backward
    (["--model_def", "birealnet18", "--backward", "ede"], {("DAB", "ede", False)}, {("ApproxSign", "approxsign")},
     True),  # the approxsign activation keeps its own rule
    (["--model_def", "birealnet18"], {("DAB", "ste", False)}, {("ApproxSign", "approxsign")}, False),
])
def test_each_binarized_layer_gets_the_backward_rule_of_its_part(argv, weights, inputs, ede):
    assert _rules(argv) == (weights, inputs, ede)


@pytest.mark.slow
def test_the_ede_schedule_runs_when_only_the_inputs_use_ede(tmp_path, monkeypatch, capsys):
    calls = []
    real = binarize.set_ede
    monkeypatch.setattr(binarize, "set_ede", lambda model, t, k: calls.append(real(model, t, k)) or calls[-1])
    argv = ["--model_def", "resnet20_1w1a", "--actBackward", "ede", "--inpsize", "8", "--epochs", "1",
            "--batch-size", "256", "--testbatchsize", "256", "--workers", "0", "--no-tensorboard",
            "--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt")]
    assert main.main(argv) == 0
    assert calls == [18]  # one epoch: EDE set on the 18 activation binarizers, none on the (STE) weights
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("note: resnet20_1w1a is an SD-BNN model")  # the run says it first


# ------------------------------------------------------------------ explicit options without effect

@pytest.mark.parametrize("argv,message", [
    (["--model_def", "sketchanet", "--binarizer", "xnor"],
     "--binarizer xnor has no effect: sketchanet trains with real weights (--binaryWeight binarizes them)"),
    (["--model_def", "sketchanetwbin", "--binActivation", "asd"],
     "--binActivation asd has no effect: sketchanetwbin has no binarized inputs (--binInputs LIST gives it some)"),
    (["--weightShift", "wsd", "--no-binaryWeight"],
     "--weightShift wsd has no effect: --no-binaryWeight keeps the weights real"),
    (["--model_def", "sketchanet", "--bnnModel"], "--bnnModel has no effect: sketchanet trains with real weights"),
    (["--model_def", "resnet20_fp", "--binarizer", "sdbnn"], "--binarizer sdbnn has no effect: resnet20_fp trains "
                                                             "with real weights"),
    (["--model_def", "resnet20_1w1a", "--binInputs", "none", "--actBackward", "ede"],
     "--actBackward ede has no effect: --binInputs none keeps every input real"),
    (["--model_def", "sketchanetwbin", "--no-binaryWeight", "--weightBackward", "ede"],
     "--weightBackward ede has no effect: --no-binaryWeight keeps the weights real"),
    (["--model_def", "sketchanetfbin", "--backward", "ede", "--weightBackward", "ste", "--actBackward", "ste"],
     "--backward ede has no effect: --weightBackward sets the weights' rule, and --actBackward sets the inputs'"),
    (SDBNN_IMAGENET[:2] + ["--backward", "ede", "--no-binaryWeight"],
     "--backward ede has no effect: --no-binaryWeight keeps the weights real, and the approxsign activation keeps"),
    (["--edeTmin", "0.01"], "--edeTmin 0.01 has no effect: no binarized part uses EDE"),
    (["--model_def", "resnet20_1w1a", "--edeTmax", "5", "--weightBackward", "ste"], "--edeTmax 5.0 has no effect"),
    (["--model_def", "birealnet18", "--actBackward", "ede"],
     "the approxsign activation is sign with Bi-Real's backward and takes no --actBackward ede"),
])
def test_an_explicit_option_without_effect_is_a_one_line_error(argv, message, tmp_path, capsys):
    with pytest.raises(opts.UsageError) as refused:  # first here: a run that trains would take minutes
        opts.parse(argv)
    assert message in str(refused.value)
    assert main.main(argv + ["--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "logs").exists()


def test_the_same_values_as_defaults_are_no_error():
    args = opts.parse(["--model_def", "sketchanet"])
    assert (args.binarizer, args.binaryWeight, args.backward, args.weightBackward, args.actBackward) == \
        ("dab", False, None, None, None)
    assert opts.parse(["--model_def", "sketchanetwbin", "--binarizer", "xnor", "--backward", "ede"]).backward == "ede"
    stage1 = opts.parse(SDBNN_IMAGENET + ["--no-binaryWeight"])  # the preset acts through the inputs alone
    assert (stage1.binarizer, stage1.binActivation, stage1.weightBackward, stage1.actBackward) == \
        ("sign", "asd", None, "approxsign")


# ------------------------------------------------------------------ SD-BNN's models on the digits

SDBNN_MODELS = sorted(models.sdbnn.VARIANTS)
SDBNN_BINARY = [name for name in SDBNN_MODELS if models.sdbnn.VARIANTS[name][1]]


@pytest.mark.parametrize("name", SDBNN_BINARY)
def test_an_sdbnn_model_at_the_defaults_says_so_and_gives_a_digits_recipe(name):
    notes = []
    opts.parse(["--model_def", name], notes=notes)
    recipe = models.digits_recipe(name)
    assert len(notes) == 1 and notes[0].startswith(f"note: {name} is an SD-BNN model")
    assert "near chance" in notes[0] and notes[0].endswith("python main.py " + " ".join(recipe))
    quiet = []
    args = opts.parse(recipe, notes=quiet)  # the recipe itself: no note, SD-BNN's conv, cosine Adam at 32 px
    assert quiet == [] and (args.binarizer, args.optimType, args.learningratescheduler) == ("sign", "adam", "cosine")
    assert (args.inpsize, args.epochs, args.batch_size, args.maxlr) == (32, 10, 32, 5e-3)
    opts.parse(["--model_def", name, "--epochs", "10"], notes=quiet)
    assert len(quiet) == 1  # one recipe flag is not the recipe
    elsewhere = []
    opts.parse(["--model_def", name, "--dataset", "tuberlin"], notes=elsewhere)
    assert elsewhere == []  # the note is about the digits


def test_no_digits_note_for_other_models_or_real_sdbnn_twins():
    for argv in (["--model_def", "sketchanetfbin"], ["--model_def", "resnet20_fp"],
                 ["--model_def", "resnet20_1w1a", "--no-binaryWeight", "--binInputs", "none"]):
        notes = []
        opts.parse(argv, notes=notes)
        assert notes == [], argv


@pytest.mark.parametrize("name", SDBNN_MODELS + ["sketchanetfbin"])
def test_python_m_models_shows_the_digits_recipe_of_each_sdbnn_model(name, capsys):
    assert models_cli.main([name]) == 0
    out = capsys.readouterr().out
    recipe = models.digits_recipe(name)
    if name not in SDBNN_MODELS:
        assert recipe is None and "digits recipe" not in out
        return
    assert out.splitlines()[-1].endswith("python main.py " + " ".join(recipe))
    assert ("--binarizer sdbnn" in out) == (name in SDBNN_BINARY)
    assert opts.parse(recipe).model_def == name


def test_help_shows_each_default_once(capsys):
    """An option whose help names its default, or whose default is None, gets no second "(default: ...)"."""
    with pytest.raises(SystemExit):
        opts.parse(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: runs) (default:" not in text and "(default: runs)" in text
    assert "(default: 64)" in text  # a plain default is still shown


def test_an_input_size_error_names_the_model_once(capsys):
    import main
    assert main.main(["--model_def", "sketchanetwbin", "--inpsize", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("sketchanetwbin") == 1 and "--inpsize" in err and len(err.splitlines()) == 1
