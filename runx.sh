#!/usr/bin/env bash
# The paper's experiments as named runs (Prabhu et al., WACV 2018, Tables 1-3):
# TU-Berlin and Sketchy x Sketch-A-Net, ResNet-18, GoogLeNet x fp, wbin, fbin x DAB, XNOR.
#
#   TUBERLIN_DIR=~/data/tuberlin SKETCHY_DIR=~/data/sketchy bash runx.sh list
#   TUBERLIN_DIR=~/data/tuberlin bash runx.sh tuberlin_sketchanetwbin_dab [extra main.py flags]
#   TUBERLIN_DIR=... SKETCHY_DIR=... bash runx.sh all            # one after the other
#   bash runx.sh report                                          # results.md, results.csv, figures in results/
#   TUBERLIN_DIR=... bash runx.sh autohybrid [--keep N | --budget F]  # train fbin, plan, train the hybrid
#   CIFAR10_DIR=~/data/cifar bash runx.sh cifar10_resnet20_sdbnn    # SD-BNN's table (list: runx.sh list)
#   bash runx.sh digits_paper [bench_digits flags]                   # the paper's comparison on the embedded
#                                                                    # digits, 10 seeds (136 CPU-minutes)
#
# TUBERLIN_DIR: the folder holding png/ (as sketches_png.zip unzips; 3-fold split, --fold from FOLD,
# default 1) or the original's pre-split tuberlin/{train,val} layout. SKETCHY_DIR: the folder holding
# rendered_256x256/ and info/ (split by info/testset.txt) or sketchy_recognition/{train,val}.
# Hyper-parameters are the original's (run1/run3/run4/run5.sh, the settings of its logs): Adam,
# decayschedular with decaylevel 2 every 50 epochs, weight decay 0, ten-crop validation; 600 epochs
# on TU-Berlin, 400 on Sketchy. Each run starts with clean.sh, as the original's scripts did, and
# its output is kept in textlogs/<name>.txt. GPU: set CUDA_VISIBLE_DEVICES; several GPUs: set
# NPROC=N to launch through torchrun (batch sizes are per process). A run continues where it stopped
# (--resume auto): a preempted or repeated run picks up its last checkpoint; OVERWRITE=1 starts it anew.
# Input sizes, binarized convs and whether weights and inputs are binarized are each model's own: main.py
# reads them from the model registry (python -m models NAME prints them), so the commands do not repeat them.
# DRYRUN=1 prints each command line (runs, planner, report) and runs nothing; a data variable that is not
# set appears as "$VAR" and is named once at the end. Without DRYRUN, 'all' checks every data variable first.
set -euo pipefail
cd "$(dirname "$0")"

# The paper's grid. Model family -> "fp-model wbin-model fbin-model"; what each model is (its input size,
# the convs it binarizes, whether its weights and inputs are binarized) main.py reads from the model
# registry (models.model_info), so no command here repeats it.
FAMILIES=(sketchanet resnet googlenet)
declare -A FAMILY=(
    [sketchanet]="sketchanet sketchanetwbin sketchanetfbin"
    [resnet]="resnet18 resnetwbin18 resnetfbin18"
    [googlenet]="googlenet googlenetwbin googlenetfbin"
)
# dataset:family:variant -> "batch testbatch maxlr minlr"
declare -A HPARAMS=(
    [tuberlin:sketchanet:wbin]="512 16 5e-4 1e-5"   [tuberlin:sketchanet:fbin]="256 16 5e-4 1e-5"
    [tuberlin:resnet:wbin]="256 16 5e-4 1e-5"       [tuberlin:resnet:fbin]="128 8 5e-4 1e-5"
    [tuberlin:googlenet:wbin]="96 4 1e-3 2e-5"      [tuberlin:googlenet:fbin]="96 4 2e-3 1e-4"
    [sketchy:sketchanet:wbin]="256 16 5e-4 1e-5"    [sketchy:sketchanet:fbin]="256 16 5e-4 1e-5"
    [sketchy:resnet:wbin]="128 8 5e-4 1e-5"         [sketchy:resnet:fbin]="128 8 5e-4 1e-5"
    [sketchy:googlenet:wbin]="128 8 1e-3 2e-5"      [sketchy:googlenet:fbin]="96 4 2e-3 1e-4"
)
# dataset of the grid -> "main.py --dataset, its data variable, classes, epochs"
declare -A GRID_DATA=([tuberlin]="tuberlin TUBERLIN_DIR 250 600" [sketchy]="sketchyrecognition SKETCHY_DIR 125 400")
# data variable -> what it names
declare -A DATA_HELP=(
    [TUBERLIN_DIR]="the TU-Berlin folder (holding png/)"
    [SKETCHY_DIR]="the Sketchy folder (holding rendered_256x256/)"
    [CIFAR10_DIR]="the folder holding cifar-10-batches-py/"
    [IMAGENET_DIR]="the folder holding train/ and val/"
)

# The named runs of the grid, built once: name -> "dataset family variant model binarizer" (a table, so a
# run is looked up, never parsed out of its name). GRID_NAMES keeps the listing order.
declare -A GRID=()
GRID_NAMES=()
for ds in tuberlin sketchy; do
    for fam in "${FAMILIES[@]}"; do
        read -r fp_model wbin_model fbin_model <<<"${FAMILY[$fam]}"
        GRID[${ds}_${fam}_fp]="$ds $fam fp $fp_model -"; GRID_NAMES+=("${ds}_${fam}_fp")
        for variant in wbin fbin; do
            model_var=${variant}_model
            for binarizer in dab xnor; do
                GRID[${ds}_${fam}${variant}_$binarizer]="$ds $fam $variant ${!model_var} $binarizer"
                GRID_NAMES+=("${ds}_${fam}${variant}_$binarizer")
            done
        done
    done
done
unset ds fam variant binarizer model_var fp_model wbin_model fbin_model

runs() {
    printf '%s\n' "${GRID_NAMES[@]}"
    printf '%s\n' "${!SDBNN[@]}" | sort
}

# is_run NAME: whether NAME is a named run (a table lookup: no pipe that could die of SIGPIPE under pipefail)
is_run() {
    [[ -n $1 && ( -n ${GRID[$1]:-} || -n ${SDBNN[$1]:-} ) ]]
}

# SD-BNN's table (sdbnn.md, section 3): name -> main.py flags. CIFAR-10 from scratch with SGD and a cosine
# schedule, SD-BNN's conv with IR-Net's EDE backward for weights and activations (--binarizer sdbnn);
# ImageNet in two stages (activations binarized, then weights too) distilled from a teacher: TEACHER (a
# torchvision ResNet-34 state_dict, as SD-BNN used) or our full-precision Bi-Real-18 run, with Bi-Real's
# backward rules: ApproxSign's on the ASD-shifted activation, the clipped straight-through one on the
# WSD-shifted weight (stage 1 has real weights, so no weight rule).
CIFAR_RECIPE="--dataset cifar10 --optimType sgd --momentum 0.9 --weightDecay 1e-4 --learningratescheduler cosine
    --batch-size 128 --testbatchsize 200 --criterion crossentropy --dataNorm imagenet --binarizer sdbnn"
IMAGENET_RECIPE="--dataset imagenet12 --nClasses 1000 --inpsize 224 --optimType adam --maxlr 1e-3
    --learningratescheduler linear --epochs 256 --batch-size 512 --testbatchsize 100 --criterion crossentropy"
IMAGENET_CONV="--binarizer sdbnn --actBackward approxsign"
declare -A SDBNN=(
    [cifar10_resnet20_sdbnn]="$CIFAR_RECIPE --model_def resnet20_1w1a --epochs 500 --maxlr 0.11 --edeTmin 1e-3 --edeTmax 10"
    [cifar10_vgg_small_sdbnn]="$CIFAR_RECIPE --model_def vgg_small_1w1a --epochs 400 --maxlr 0.08 --edeTmin 0.1 --edeTmax 10"
    [cifar10_resnet18_sdbnn]="$CIFAR_RECIPE --model_def resnet18_1w1a --epochs 600 --maxlr 0.08 --edeTmin 1e-3 --edeTmax 10"
    [imagenet_birealnet18_teacher]="$IMAGENET_RECIPE --model_def birealnet18_fp --weightDecay 1e-5 --labelSmoothing 0.1"
    [imagenet_birealnet18_stage1]="$IMAGENET_RECIPE --model_def birealnet18 $IMAGENET_CONV --no-binaryWeight
        --weightDecay 1e-5 TEACHER"
    [imagenet_birealnet18_stage2]="$IMAGENET_RECIPE --model_def birealnet18 $IMAGENET_CONV --weightBackward ste
        --weightDecay 0 --pretrained_file savedmodels/imagenet_birealnet18_stage1/last.pth TEACHER"
)

# SD-BNN run -> its data variable
declare -A SDBNN_DATA=(
    [cifar10_resnet20_sdbnn]=CIFAR10_DIR [cifar10_vgg_small_sdbnn]=CIFAR10_DIR [cifar10_resnet18_sdbnn]=CIFAR10_DIR
    [imagenet_birealnet18_teacher]=IMAGENET_DIR [imagenet_birealnet18_stage1]=IMAGENET_DIR
    [imagenet_birealnet18_stage2]=IMAGENET_DIR
)

# data_var NAME: the data variable run NAME reads
data_var() {
    if [[ -n ${SDBNN[$1]:-} ]]; then echo "${SDBNN_DATA[$1]}"; return; fi
    local ds rest
    read -r ds rest <<<"${GRID[$1]}"
    read -r _ rest _ <<<"${GRID_DATA[$ds]}"
    echo "$rest"
}

# A dry run prints "$VAR" where a data variable is not set and names those variables once at the end.
MISSING=()
PLACEHOLDERS=()
missing_note() {
    if [[ -n ${DRYRUN:-} && ${#MISSING[@]} -gt 0 ]]; then
        local var
        echo "runx.sh: dry run: not set: ${MISSING[*]} (the commands above read them as \"\$NAME\")" >&2
        for var in "${MISSING[@]}"; do echo "  $var: ${DATA_HELP[$var]}" >&2; done
    fi
}
trap missing_note EXIT

# data_dir VAR: DATA=$VAR; where VAR is not set: "$VAR" in a dry run, else one line and exit status 2
data_dir() {
    local var=$1
    if [[ -n ${!var:-} ]]; then DATA=${!var}; return 0; fi
    if [[ -z ${DRYRUN:-} ]]; then echo "runx.sh: set $var to ${DATA_HELP[$var]}" >&2; exit 2; fi
    if [[ " ${MISSING[*]} " != *" $var "* ]]; then MISSING+=("$var"); fi
    PLACEHOLDERS+=("$var")
    DATA="\$$var"
}

# show ARGS...: print a command line, shell-quoted; an argument holding a placeholder ($VAR) is printed
# in double quotes, for the shell to expand
show() {
    local out=() arg quoted var
    for arg in "$@"; do
        printf -v quoted '%q' "$arg"
        for var in "${PLACEHOLDERS[@]}"; do
            if [[ $arg == *"\$$var"* ]]; then quoted="\"$arg\""; break; fi
        done
        out+=("$quoted")
    done
    echo "${out[*]}"
}

launch() {
    local name=$1; shift
    if [[ -n ${SDBNN[$name]:-} ]]; then launch_sdbnn "$name" "$@"; return; fi
    local ds fam variant model binarizer dataset var classes epochs batch testbatch maxlr minlr
    read -r ds fam variant model binarizer <<<"${GRID[$name]}"
    read -r dataset var classes epochs <<<"${GRID_DATA[$ds]}"
    data_dir "$var"
    # fp runs use the wbin hyper-parameters, as the paper compares them at equal settings.
    read -r batch testbatch maxlr minlr <<<"${HPARAMS[$ds:$fam:${variant/fp/wbin}]}"
    local flags=(--dataset "$dataset")
    if [[ $ds == tuberlin ]]; then flags+=(--fold "${FOLD:-1}"); fi
    if [[ $variant != fp ]]; then flags+=(--binarizer "$binarizer"); fi
    train "${RUN_NAME:-$name}" "${flags[@]}" --data_dir "$DATA" --nClasses "$classes" --model_def "$model" \
        --epochs "$epochs" --batch-size "$batch" --testbatchsize "$testbatch" --tenCrop \
        --learningratescheduler decayschedular --decayinterval 50 --decaylevel 2 --optimType adam \
        --maxlr "$maxlr" --minlr "$minlr" --weightDecay 0 --cachemode "$@"
}

# train NAME FLAGS...: one main.py run named NAME (through torchrun with NPROC), logged to textlogs/NAME.txt
train() {
    local name=$1; shift
    local launcher=(python3) again=(--resume auto)
    if [[ -n ${NPROC:-} ]]; then launcher=(torchrun --nproc_per_node="$NPROC"); fi
    if [[ -n ${OVERWRITE:-} ]]; then again=(--overwrite); fi
    local command=("${launcher[@]}" main.py --name "$name" --workers "${WORKERS:-8}" "${again[@]}" "$@")
    if [[ -n ${DRYRUN:-} ]]; then show "${command[@]}"; return 0; fi
    mkdir -p textlogs
    bash clean.sh
    "${command[@]}" 2>&1 | tee -a "textlogs/$name.txt"
}

launch_sdbnn() {
    local name=$1; shift
    local teacher=()
    data_dir "${SDBNN_DATA[$name]}"
    if [[ -n ${TEACHER:-} ]]; then teacher=(--teacher "$TEACHER" --teacherModel resnet34)
    else teacher=(--teacher savedmodels/imagenet_birealnet18_teacher/best.pth); fi
    local flags=() f
    for f in ${SDBNN[$name]}; do
        if [[ $f == TEACHER ]]; then flags+=("${teacher[@]}" --kdT 1 --kdAlpha 1); else flags+=("$f"); fi
    done
    train "$name" "${flags[@]}" --data_dir "$DATA" "$@"
}

# Hybrid Binary Networks from data: train the fully binarized Sketch-A-Net, measure which binarized inputs
# err most and plan (python3 -m analysis.hybrid, default --keep 2), then train the hybrid the plan gives.
# A dry run prints the three commands, the plan as "$PLAN", and runs none of them (not even the planner).
autohybrid() {
    local plan_flags=("$@")
    [[ ${#plan_flags[@]} -gt 0 ]] || plan_flags=(--keep 2)
    local source=tuberlin_sketchanetfbin_dab plan
    launch "$source"
    local planner=(python3 -m analysis.hybrid "savedmodels/$source/best.pth" "${plan_flags[@]}")
    if [[ -n ${DRYRUN:-} ]]; then
        show "${planner[@]}"
        echo "runx.sh: dry run: \"\$PLAN\" stands for the --binInputs value the planner prints" >&2
        PLACEHOLDERS+=(PLAN)
        plan='$PLAN'
    else
        plan=$("${planner[@]}" | tee "textlogs/${source}_plan.txt" | awk '/^--binInputs /{print $2}')
        [[ -n $plan ]] || { echo "runx.sh: the planner gave no plan (see textlogs/${source}_plan.txt)" >&2; exit 1; }
    fi
    RUN_NAME="tuberlin_sketchanet_autohybrid_${plan//,/_}" launch "$source" --binInputs "$plan"
}

# all FLAGS...: every run, one after the other; without DRYRUN every data variable must be set first
all() {
    local name var missing=()
    if [[ -z ${DRYRUN:-} ]]; then
        for name in $(runs); do
            var=$(data_var "$name")
            if [[ -z ${!var:-} && " ${missing[*]} " != *" $var "* ]]; then missing+=("$var"); fi
        done
        if [[ ${#missing[@]} -gt 0 ]]; then
            echo "runx.sh all: set ${missing[*]} first (nothing was run); or DRYRUN=1 to print the commands" >&2
            exit 2
        fi
    fi
    for name in $(runs); do launch "$name" "$@"; done
}

case ${1:-} in
    ""|-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    list) runs ;;
    all) shift; all "$@" ;;
    report) shift
        report=(python3 -m analysis.report runs --out "${REPORT_DIR:-results}" "$@")
        if [[ -n ${DRYRUN:-} ]]; then show "${report[@]}"; else "${report[@]}"; fi ;;
    autohybrid) shift; autohybrid "$@" ;;
    digits_paper) shift
        suite=(python3 bench/bench_digits.py --suite paper --out "${DIGITS_DIR:-runs/digits-paper}" "$@")
        if [[ -n ${DRYRUN:-} ]]; then show "${suite[@]}"; else "${suite[@]}"; fi ;;
    *) name=$1; shift
       is_run "$name" || { echo "runx.sh: unknown run '$name'; see 'bash runx.sh list'" >&2; exit 2; }
       launch "$name" "$@" ;;
esac
