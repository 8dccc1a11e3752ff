"""opts: every flag of the original code parses here in each spelling and value form it accepted, every
choice it offered either works or is refused with a clear one-line error, the original's run-script
command lines resolve to their binarized models (the CIFAR ones also run one epoch), the defaults resolve
as documented, and ``to_argv`` turns resolved options back into flags that resolve alike."""

import pytest

import binarize
import main
import models
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
