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
# DRYRUN=1 prints each run's command line instead of running it.
set -euo pipefail
cd "$(dirname "$0")"

# model family -> "fp-model wbin-model fbin-model inpsize binStart binEnd"
declare -A FAMILY=(
    [sketchanet]="sketchanet sketchanetwbin sketchanetfbin 225 2 7"
    [resnet]="resnet18 resnetwbin18 resnetfbin18 224 2 100"
    [googlenet]="googlenet googlenetwbin googlenetfbin 224 2 100"
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

runs() {
    local ds fam variant
    for ds in tuberlin sketchy; do
        for fam in sketchanet resnet googlenet; do
            echo "${ds}_${fam}_fp"
            for variant in wbin fbin; do
                echo "${ds}_${fam}${variant}_dab"
                echo "${ds}_${fam}${variant}_xnor"
            done
        done
    done
    printf '%s\n' "${!SDBNN[@]}" | sort
}

# SD-BNN's table (sdbnn.md, section 3): name -> main.py flags. CIFAR-10 from scratch with SGD and a cosine
# schedule; ImageNet in two stages (activations binarized, then weights too) distilled from a teacher:
# TEACHER (a torchvision ResNet-34 state_dict, as SD-BNN used) or our full-precision Bi-Real-18 run.
CIFAR_RECIPE="--dataset cifar10 --optimType sgd --momentum 0.9 --weightDecay 1e-4 --learningratescheduler cosine
    --batch-size 128 --testbatchsize 200 --criterion crossentropy --dataNorm imagenet --binarizer sdbnn"
IMAGENET_RECIPE="--dataset imagenet12 --nClasses 1000 --inpsize 224 --optimType adam --maxlr 1e-3
    --learningratescheduler linear --epochs 256 --batch-size 512 --testbatchsize 100 --criterion crossentropy"
declare -A SDBNN=(
    [cifar10_resnet20_sdbnn]="$CIFAR_RECIPE --model_def resnet20_1w1a --epochs 500 --maxlr 0.11 --edeTmin 1e-3 --edeTmax 10"
    [cifar10_vgg_small_sdbnn]="$CIFAR_RECIPE --model_def vgg_small_1w1a --epochs 400 --maxlr 0.08 --edeTmin 0.1 --edeTmax 10"
    [cifar10_resnet18_sdbnn]="$CIFAR_RECIPE --model_def resnet18_1w1a --epochs 600 --maxlr 0.08 --edeTmin 1e-3 --edeTmax 10"
    [imagenet_birealnet18_teacher]="$IMAGENET_RECIPE --model_def birealnet18_fp --weightDecay 1e-5 --labelSmoothing 0.1"
    [imagenet_birealnet18_stage1]="$IMAGENET_RECIPE --model_def birealnet18 --binarizer sdbnn --no-binaryWeight
        --weightDecay 1e-5 TEACHER"
    [imagenet_birealnet18_stage2]="$IMAGENET_RECIPE --model_def birealnet18 --binarizer sdbnn --weightDecay 0
        --pretrained_file savedmodels/imagenet_birealnet18_stage1/last.pth TEACHER"
)

launch() {
    local name=$1; shift
    local ds=${name%%_*} rest=${name#*_}
    local tag=${rest%_*} binarizer=${rest##*_}
    local fam variant
    case $tag in
        *wbin) fam=${tag%wbin}; variant=wbin ;;
        *fbin) fam=${tag%fbin}; variant=fbin ;;
        *) fam=$tag; variant=fp ;;
    esac
    if [[ -n ${SDBNN[$name]:-} ]]; then launch_sdbnn "$name" "$@"; return; fi
    [[ -n ${FAMILY[$fam]:-} ]] || { echo "runx.sh: unknown run '$name'; see 'bash runx.sh list'" >&2; exit 2; }
    read -r fp_model wbin_model fbin_model inpsize bin_start bin_end <<<"${FAMILY[$fam]}"
    # fp runs use the wbin hyper-parameters, as the paper compares them at equal settings.
    read -r batch testbatch maxlr minlr <<<"${HPARAMS[$ds:$fam:${variant/fp/wbin}]}"
    local model flags=()
    case $variant in
        fp) model=$fp_model; flags+=(--no-binaryWeight) ;;
        wbin) model=$wbin_model; flags+=(--binaryWeight --binarizer "$binarizer") ;;
        fbin) model=$fbin_model; flags+=(--binaryWeight --binarizer "$binarizer") ;;
    esac
    local data classes epochs
    if [[ $ds == tuberlin ]]; then
        data=${TUBERLIN_DIR:?set TUBERLIN_DIR to the TU-Berlin folder (holding png/)}; classes=250; epochs=600
        flags+=(--dataset tuberlin --fold "${FOLD:-1}")
    else
        data=${SKETCHY_DIR:?set SKETCHY_DIR to the Sketchy folder (holding rendered_256x256/)}; classes=125; epochs=400
        flags+=(--dataset sketchyrecognition)
    fi
    train "${RUN_NAME:-$name}" "${flags[@]}" --data_dir "$data" --nClasses "$classes" --model_def "$model" \
        --epochs "$epochs" --batch-size "$batch" --testbatchsize "$testbatch" --tenCrop \
        --learningratescheduler decayschedular --decayinterval 50 --decaylevel 2 --optimType adam \
        --maxlr "$maxlr" --minlr "$minlr" --weightDecay 0 --binStart "$bin_start" --binEnd "$bin_end" \
        --inpsize "$inpsize" --cachemode "$@"
}

# train NAME FLAGS...: one main.py run named NAME (through torchrun with NPROC), logged to textlogs/NAME.txt
train() {
    local name=$1; shift
    local launcher=(python3)
    if [[ -n ${NPROC:-} ]]; then launcher=(torchrun --nproc_per_node="$NPROC"); fi
    local again=(--resume auto)
    if [[ -n ${OVERWRITE:-} ]]; then again=(--overwrite); fi
    if [[ -n ${DRYRUN:-} ]]; then  # print the command instead of running it
        printf '%q ' "${launcher[@]}" main.py --name "$name" --workers "${WORKERS:-8}" "${again[@]}" "$@"; echo
        return 0
    fi
    mkdir -p textlogs
    bash clean.sh
    "${launcher[@]}" main.py --name "$name" --workers "${WORKERS:-8}" "${again[@]}" "$@" 2>&1 | tee -a "textlogs/$name.txt"
    return "${PIPESTATUS[0]}"
}

launch_sdbnn() {
    local name=$1; shift
    local data teacher=()
    case $name in
        cifar10_*) data=${CIFAR10_DIR:?set CIFAR10_DIR to the folder holding cifar-10-batches-py/} ;;
        imagenet_*) data=${IMAGENET_DIR:?set IMAGENET_DIR to the folder holding train/ and val/}
            if [[ -n ${TEACHER:-} ]]; then teacher=(--teacher "$TEACHER" --teacherModel resnet34)
            else teacher=(--teacher savedmodels/imagenet_birealnet18_teacher/best.pth); fi ;;
    esac
    local flags=()
    for f in ${SDBNN[$name]}; do
        if [[ $f == TEACHER ]]; then flags+=("${teacher[@]}" --kdT 1 --kdAlpha 1); else flags+=("$f"); fi
    done
    train "$name" "${flags[@]}" --data_dir "$data" "$@"
}

# Hybrid Binary Networks from data: train the fully binarized Sketch-A-Net, measure which binarized inputs
# err most and plan (python -m analysis.hybrid, default --keep 2), then train the hybrid the plan gives.
autohybrid() {
    local plan_flags=("$@")
    [[ ${#plan_flags[@]} -gt 0 ]] || plan_flags=(--keep 2)
    launch tuberlin_sketchanetfbin_dab
    local plan
    plan=$(python3 -m analysis.hybrid savedmodels/tuberlin_sketchanetfbin_dab/best.pth "${plan_flags[@]}" \
           | tee textlogs/tuberlin_sketchanetfbin_dab_plan.txt | awk '/^--binInputs /{print $2}')
    [[ -n $plan ]] || { echo "runx.sh: the planner gave no plan (see textlogs/tuberlin_sketchanetfbin_dab_plan.txt)" >&2; exit 1; }
    RUN_NAME="tuberlin_sketchanet_autohybrid_${plan//,/_}" launch tuberlin_sketchanetfbin_dab --binInputs "$plan"
}

case ${1:-} in
    ""|-h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    list) runs ;;
    all) shift; for name in $(runs); do launch "$name" "$@"; done ;;
    report) shift; python3 -m analysis.report runs --out "${REPORT_DIR:-results}" "$@" ;;
    autohybrid) shift; autohybrid "$@" ;;
    *) name=$1; shift
       runs | grep -qx "$name" || { echo "runx.sh: unknown run '$name'; see 'bash runx.sh list'" >&2; exit 2; }
       launch "$name" "$@" ;;
esac
