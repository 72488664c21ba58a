#!/usr/bin/env bash
# The GPU checks of one lent-GPU session, in one script that fits about 9.5 minutes on an H100/H200:
#   1. host-device syncs of the training step, a decoding step and generate (benchmarks/cuda_syncs.py), and
#      attention on ever new shapes per SDPA backend set (benchmarks/attention_shapes.py)
#   2. the Fixup vs MarianMTModel table at the iwslt and base sizes in bf16, then base with torch.compile and
#      32k-token batches for MFU (benchmarks/bench_vs_marian.py --device cuda, Fixup also with its loss from
#      materialised logits, --with-logits); alone on the GPU, as timed; then the default Multi30k job alone
#      for a fixed number of updates in fp32 and in bf16 (train.mixed_precision no vs auto), for its speed
#   3. with the time left, side by side (nothing timed): the d512 stability grid in fp16
#      (benchmarks/stability.py, one process per task x variant, deepest cells first)
# Every part has its own time limit inside BUDGET_S seconds in all (default 560), so a slow part costs its
# own results only. Results go to $OUT (default runs/gpu_checks): the JSON reports, log.txt, and a tarball
# of the stability and training outputs (no weights). Data: $FIXUP_DATA_DIR/multi30k (a copy inside the
# repo, named in the device call's carry, where ../shared does not travel).
#
#   FIXUP_DATA_DIR=local_data/gpu bash benchmarks/gpu_checks.sh    # (a copy of ../shared/data/multi30k inside)
#
# Part 3 alone, on other cells (what issue #8 asks next: T-Fixup's 50+50 cells at real batch sizes, the twins on
# the same batches): PARTS=3 GRID_LAYERS=50 GRID_BATCH=256 GRID_PRECISIONS="fp32 fp16" bash benchmarks/gpu_checks.sh
set -u
START=$(date +%s)
BUDGET=${BUDGET_S:-560}
left() { echo $((START + BUDGET - $(date +%s))); }  # seconds left in the budget
upto() { local t; t=$(($(left) - $2)); echo $((t < $1 ? (t > 5 ? t : 5) : $1)); }  # min(cap, left - reserve)
OUT=${OUT:-runs/gpu_checks}
DATA=${FIXUP_DATA_DIR:-../shared/data}
SPEED_UPDATES=${MT_SPEED_UPDATES:-300}        # 0 skips part 2c
PROFILE_TOP=${PROFILE_TOP:-12}                # kernels listed per model from one profiled training step
PARTS=${PARTS:-123}                         # which parts run (digits); part 3 uses the grid settings below
GRID_LAYERS=${GRID_LAYERS:-50 18 6}         # N of N+N, deepest first
GRID_BATCH=${GRID_BATCH:-16}                # sentences (copy task: sequences) per update, 16 tokens each
GRID_PRECISIONS=${GRID_PRECISIONS:-fp16}
WORK=runs/gpu_work
rm -rf "$WORK"  # a warm machine keeps ignored folders: a rerun must not resume (or report) the last run's jobs
mkdir -p "$OUT" "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
exec > >(tee -a "$OUT/log.txt") 2>&1
log() { echo "== $(date -u +%T) $*"; }

log "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "transformers",
transformers.__version__, "accelerate", accelerate.__version__, torch.cuda.get_device_name())'

if [[ $PARTS == *1* ]]; then
log "1. host-device syncs"
timeout "$(upto 90 300)" python3 benchmarks/cuda_syncs.py --output "$OUT/cuda_syncs.json" || log "cuda_syncs failed: $?"

log "1b. attention on new shapes per SDPA backend set (cuDNN's per-shape graph builds)"
timeout "$(upto 60 300)" python3 benchmarks/attention_shapes.py --shapes 25 --output "$OUT/attention_shapes.json" \
    || log "attention_shapes failed: $?"

fi

if [[ $PARTS == *2* ]]; then
log "2. Fixup vs Marian, bf16 (8k target tokens per batch, 32 + 32 tokens per pair; Fixup also with its loss from logits)"
for size in iwslt base; do
    reserve=$([ "$size" = iwslt ] && echo 300 || echo 190)  # base still gets its time after a slow iwslt
    timeout "$(upto 110 "$reserve")" python3 benchmarks/bench_vs_marian.py --device cuda --precision bf16 \
        --size "$size" --tokens 8192 --src-len 32 --tgt-len 32 --threads 8 --no-postln --with-logits \
        --profile-top "$PROFILE_TOP" --output "$OUT/bench_${size}_bf16.json" || log "bench $size failed: $?"
done
log "2b. base, torch.compile, 32k-token batches (MFU)"
timeout "$(upto 200 120)" python3 benchmarks/bench_vs_marian.py --device cuda --precision bf16 --size base --tokens 32768 \
    --src-len 32 --tgt-len 32 --threads 8 --compile --no-postln --with-logits --warmup 2 --repeats 3 --mem-repeats 1 \
    --profile-top "$PROFILE_TOP" --output "$OUT/bench_base_bf16_compile.json" || log "bench compile failed: $?"

log "2c. the default Multi30k job alone, $SPEED_UPDATES updates in fp32 then in bf16 (train.mixed_precision auto)"
for precision in $([ "$SPEED_UPDATES" -gt 0 ] && echo no auto); do
    timeout "$(upto 75 60)" python3 -m accelerate.commands.launch --num_processes 1 scripts/train_mt.py \
        --config configs/multi30k_de_en.yaml --output_dir "$WORK/mt_speed_$precision" \
        --data.data_dir "$DATA/multi30k" --train.max_minutes null --train.max_updates "$SPEED_UPDATES" \
        --train.mixed_precision "$precision" --eval.valid_interval_updates 100000 --eval.test_split null \
        --checkpoint.save_interval_updates 100000 --checkpoint.average_last 1 --eval.test_model best \
        > "$WORK/mt_speed_$precision.log" 2>&1 || log "mt speed $precision failed: $?"
    grep -h '"time_breakdown"' -A7 "$WORK/mt_speed_$precision/results.json" | tr -d '\n '; echo
done

fi

[[ $PARTS == *3* ]] || { log "done"; exit 0; }
log "3. d512 stability grid ($GRID_PRECISIONS, N+N for N in $GRID_LAYERS, batch $GRID_BATCH), whatever time is left, side by side"
export OMP_NUM_THREADS=1
pids=()
# One process per task and variant:optimizer:clip: the default, T-Fixup with its reference run's RAdam and
# fairseq's old clip-norm default (25), and both LayerNorm twins (fairseq's q/k/v init since 2026-11-27).
for task in copy multi30k; do
    for run in fixup:adam:0 t_fixup:radam:25 post_ln:adam:0 pre_ln:adam:0; do
        IFS=: read -r variant optimizer clip <<< "$run"
        dir="$WORK/stability/$task-$variant-$optimizer-clip$clip"
        mkdir -p "$dir"
        timeout "$(upto 600 20)" python3 benchmarks/stability.py --device cuda --tasks "$task" --variants "$variant" \
            --optimizers "$optimizer" --clip-norms "$clip" --layers $GRID_LAYERS --lrs 1e-3 5e-4 --warmups 0 10 \
            --precisions $GRID_PRECISIONS --batch-size "$GRID_BATCH" --data-dir "$DATA" --output-dir "$dir" \
            > "$dir/grid.log" 2>&1 &
        pids+=($!)
    done
done
wait "${pids[@]}"
log "stability grid merged"
mkdir -p "$WORK/stability/all"
python3 benchmarks/stability.py --report-only --output-dir "$WORK/stability/all" \
    --merge "$WORK"/stability/*-clip*/results.json | tail -3
cp "$WORK/stability/all/results.json" "$OUT/stability_$(tr ' ' _ <<< "$GRID_PRECISIONS")_batch$GRID_BATCH.json" 2>/dev/null
tar -czf "$OUT/gpu_work.tar.gz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' \
    --exclude='checkpoint*' --exclude='best' --exclude='last' -C "$WORK" .
log "done"
