"""Every flag of the original's code/opts.py parses here in each spelling and value form it accepted
(spec/original-models.md, last section), and every choice it offered either works or is refused with a
clear one-line error."""

import pytest

import models
import opts

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
