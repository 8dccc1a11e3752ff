#!/usr/bin/env bash
# The paper's experiments as named runs (Prabhu et al., WACV 2018, Tables 1-3):
# TU-Berlin and Sketchy x Sketch-A-Net, ResNet-18, GoogLeNet x fp, wbin, fbin x DAB, XNOR.
#
#   TUBERLIN_DIR=~/data/tuberlin SKETCHY_DIR=~/data/sketchy bash runx.sh list
#   TUBERLIN_DIR=~/data/tuberlin bash runx.sh tuberlin_sketchanetwbin_dab [extra main.py flags]
#   TUBERLIN_DIR=... SKETCHY_DIR=... bash runx.sh all            # one after the other
#
# TUBERLIN_DIR: the folder holding png/ (as sketches_png.zip unzips; 3-fold split, --fold from FOLD,
# default 1) or the original's pre-split tuberlin/{train,val} layout. SKETCHY_DIR: the folder holding
# rendered_256x256/ and info/ (split by info/testset.txt) or sketchy_recognition/{train,val}.
# Hyper-parameters are the original's (run1/run3/run4/run5.sh, the settings of its logs): Adam,
# decayschedular with decaylevel 2 every 50 epochs, weight decay 0, ten-crop validation; 600 epochs
# on TU-Berlin, 400 on Sketchy. Each run starts with clean.sh, as the original's scripts did, and
# its output is kept in textlogs/<name>.txt. GPU: set CUDA_VISIBLE_DEVICES; several GPUs: set
# NPROC=N to launch through torchrun (batch sizes are per process).
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
}

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
    local launcher=(python3)
    if [[ -n ${NPROC:-} ]]; then launcher=(torchrun --nproc_per_node="$NPROC"); fi
    mkdir -p textlogs
    bash clean.sh
    "${launcher[@]}" main.py "${flags[@]}" --data_dir "$data" --nClasses "$classes" --model_def "$model" \
        --name "$name" --epochs "$epochs" --batch-size "$batch" --testbatchsize "$testbatch" --tenCrop \
        --learningratescheduler decayschedular --decayinterval 50 --decaylevel 2 --optimType adam \
        --maxlr "$maxlr" --minlr "$minlr" --weightDecay 0 --binStart "$bin_start" --binEnd "$bin_end" \
        --inpsize "$inpsize" --workers "${WORKERS:-8}" --cachemode "$@" 2>&1 | tee "textlogs/$name.txt"
}

case ${1:-} in
    ""|-h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    list) runs ;;
    all) shift; for name in $(runs); do launch "$name" "$@"; done ;;
    *) name=$1; shift
       runs | grep -qx "$name" || { echo "runx.sh: unknown run '$name'; see 'bash runx.sh list'" >&2; exit 2; }
       launch "$name" "$@" ;;
esac
