#!/usr/bin/env bash
# One stage of a GPU session's checks, each within one device call (10 minutes at most):
#
#     bash bench/gpu_session.sh tests   # the GPU tests of what a CPU session could not run
#     bash bench/gpu_session.sh bench   # host time, the unquantized norm, the sandwich
#     bash bench/gpu_session.sh torchao # torchao's per-row and 1x128 quants vs Inductor
#     bash bench/gpu_session.sh rerun   # the norm / quant tables bench's measurement fixes
#                                       # left to redo
#     bash bench/gpu_session.sh rerun-attention  # and the attention ones
#     bash bench/gpu_session.sh per-group-div  # fused per-group's division form, end
#                                       # to end, with its GPU tests
#     bash bench/gpu_session.sh per-token  # per-token's div_finite back in PTX: its GPU
#                                       # tests, and every per-token table of issue 3
#     bash bench/gpu_session.sh tiles   # the tiled kernels' GPU tests, the grid probe and
#                                       # the flat static probe
#     bash bench/gpu_session.sh gluon   # the Gluon prefill: its GPU tests, by length at
#                                       # both head dims, issue 4's prefill rows
#     bash bench/gpu_session.sh gluon-sweep  # Gluon configs by length, head dims 64, 128,
#                                       # and how attention=auto times its candidates
#     bash bench/gpu_session.sh plans     # the Gluon prefill's plans: tests, issue 4's rows
#     bash bench/gpu_session.sh issue-4   # after issue-4-check: the epilogue's cost, then
#                                       # every row of issue 4's attention table
#     bash bench/gpu_session.sh issue-4-check  # after a kernel change: the Gluon GPU tests,
#                                       # the Triton prefill's main GPU tests, the epilogue's
#                                       # cost, issue 4's two causal rows
#     bash bench/gpu_session.sh issue-4-quick  # the static div tests, the epilogue's
#                                       # cost, issue 4's head-dim-64 causal row
#     bash bench/gpu_session.sh coverage  # the issue's sizes the other stages leave out:
#                                       # per-group and per-tensor without a residual and
#                                       # alone, hidden 8192
#     bash bench/gpu_session.sh nvfp4   # nvfp4 with whole blocks a thread: the nvfp4 GPU
#                                       # tests, the layout probe, rms_norm + nvfp4 rows
#     bash bench/gpu_session.sh nvfp4-more  # and its add + rms_norm and standalone rows
#     bash bench/gpu_session.sh rows    # rms_norm + nvfp4 / per-token, several rows a
#                                       # program: its GPU tests, the probe, its rows end
#                                       # to end
#     bash bench/gpu_session.sh rows-more  # per-token's rows at 8 warps: its GPU tests,
#                                       # the probe at more rows and at 8192 columns,
#                                       # Inductor's standalone static kernel's source
#     bash bench/gpu_session.sh full-block  # n_cols as BLOCK over rows of exactly BLOCK
#                                       # columns: its GPU tests, its probe
#     bash bench/gpu_session.sh rows-8192  # per-token's rows a program at 8192 columns:
#                                       # its tests, end to end; static at other configs
#     bash bench/gpu_session.sh per-tensor-l2  # dynamic per-tensor with L2 eviction hints
#     bash bench/gpu_session.sh static-flat  # the standalone static quant in Inductor's
#                                       # flat form, beside the generated kernel
#     bash bench/gpu_session.sh standalone-halves  # the standalone nvfp4 quant's 1024-
#                                       # column tiles as halves: tests, probe, its rows
#     bash bench/gpu_session.sh pieces  # rms_norm + nvfp4 rows held in pieces (7168): the
#                                       # nvfp4 GPU tests, the pieces probe, its rows
#     bash bench/gpu_session.sh suite   # the suite but for the two files below
#     bash bench/gpu_session.sh epilogues         # tests/test_quant_epilogues.py
#     bash bench/gpu_session.sh attention-kernel  # tests/test_attention_kernel.py
#     bash bench/gpu_session.sh shards [N]  # the whole suite in one call: its tests dealt
#                                       # round-robin to N pytest processes (default 6),
#                                       # each stopped after $SHARD_LIMIT s (540)
#     bash bench/gpu_session.sh hf      # HF models: their tests, a decode step end to end
#                                       # (carry .whl-hf: bash bench/hf_wheels.sh)
#
# Installs the xdsl wheels carried in .whl/ (bash ../shared/gpu/wheels.sh makes them) and
# irfuse, then writes each step's log, and bench/RESULTS.md after a bench, to $OUT. Every
# step has its own time limit, so that a hang costs that step, not the call.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/irfuse-gpu-session}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps .whl/*.whl
python3 -m pip install -q --no-deps --no-build-isolation -e .
nvidia-smi --query-gpu=name,power.draw,utilization.gpu --format=csv > "$OUT/gpu.txt" 2>&1

step() {  # step NAME LIMIT_S COMMAND...: run it, log it, say how it ended (its status)
    local name=$1 limit=$2
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc ($(tail -n 1 "$OUT/$name.log"))"
    return $rc
}

PYTEST=(python3 -m pytest --import-mode=importlib -q -p no:cacheprovider)
case "${1:-}" in
tests)
    step graph-launch 240 "${PYTEST[@]}" tests/test_attention_graph_launch.py \
        tests/test_user_kernels.py tests/test_backend.py -k "gpu or inductor_path"
    step new-forms 150 "${PYTEST[@]}" tests/test_flattened_quant.py \
        tests/test_model_generate.py tests/test_raise_dynamic_quant.py \
        tests/test_gemma_layers.py tests/test_torchao_layer.py
    # the sandwich and static-div epilogues at model sizes (the rest of the file: suite)
    step new-epilogues 180 "${PYTEST[@]}" tests/test_quant_epilogues.py tests/test_kernels.py \
        tests/test_attention_kernel.py tests/test_attention_fusion.py \
        -k "sandwich or div or in_dtype or torchao or nan_makes"
    ;;
bench)
    step host-time 200 python3 bench/host_time.py
    step add-norm-alone 90 python3 bench/quant_schemes.py --schemes none \
        --tokens 1 4096 16384
    step norm-alone 90 python3 bench/quant_schemes.py --schemes none --no-residual \
        --tokens 1 4096 16384
    step sandwich 200 python3 bench/quant_schemes.py --sandwich \
        --schemes per_token static --hidden 3840 5376 --tokens 16 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
hf)
    python3 -m pip install -q --no-index --find-links .whl-hf 'transformers==5.25.*'
    step hf-tests 240 "${PYTEST[@]}" tests/test_hf_models.py
    step hf-decode 330 python3 bench/hf_decode.py --layers 4 --batch 1 16 64
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
torchao)
    # torchao's per-row, per-tensor and 1x128 quants after add + norm, both compiling the
    # same PyTorch
    step torchao 240 python3 bench/quant_schemes.py --as-written --tokens 1 16 4096 16384 \
        --schemes "per_token in_dtype" "per_tensor in_dtype" "per_group 128 in_dtype"
    step torchao-7168 240 python3 bench/quant_schemes.py --as-written --hidden 7168 \
        --tokens 4096 16384 --schemes "per_token in_dtype" "per_tensor in_dtype" \
        "per_group 128 in_dtype"
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
rerun)
    # the tables the measurement corrections of 2026-12-05 left to re-run (bench/RESULTS.md):
    # norm / quant over rotating inputs, with x.clone()'s GB/s beside them; attention +
    # nvfp4 with inputs laid out as a model's projections leave them
    step standalone 200 python3 bench/quant_schemes.py --standalone \
        --schemes static per_token nvfp4 --hidden 4096 7168 --tokens 4096 16384
    step no-residual 200 python3 bench/quant_schemes.py --no-residual \
        --schemes static per_token nvfp4 --hidden 4096 7168 --tokens 4096 16384
    step add-norm 200 python3 bench/quant_schemes.py \
        --schemes static per_token "per_group 128" nvfp4 --hidden 4096 --tokens 1 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
rerun-attention)
    # attention + nvfp4, and the main attention table, with q laid out as a model's
    # projections leave it (bench/RESULTS.md, "Measurement corrections")
    step attention-nvfp4 200 python3 bench/attention_nvfp4.py
    step attention 380 python3 bench/attention.py --only 0 1 2 3 4 5 6
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
per-group-div)
    # fused per-group's DIV_BY_BOUNDED (the kernel alone 5%-8% faster than the removed
    # DIV_BY_RANGED) with its GPU tests, and the per-group rows of issue 3's table it
    # moves (run in the thirty-second session: 90%-99% of a copy)
    step per-group-tests 200 "${PYTEST[@]}" tests/test_quant_epilogues.py tests/test_kernels.py \
        tests/test_sm90_ptx.py tests/test_backend.py -k "per_group or div"
    step no-residual 130 python3 bench/quant_schemes.py --no-residual \
        --schemes "per_group 128" --hidden 4096 7168 8192 --tokens 4096 16384
    step divisions 90 python3 bench/launch_sweep.py --form norm --schemes "per_group 128" \
        --hidden 8192 --divisions DIV_BY DIV_BY_BOUNDED
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
per-token)
    # per-token's div_finite in inline PTX again (the plain-Triton form ran 7%-8% slower
    # without a residual at hidden 7168, thirty-third session): its GPU tests, and the
    # per-token tables of issue 3 (without a residual, after add + rms_norm, alone)
    step per-token-tests 200 "${PYTEST[@]}" tests/test_quant_epilogues.py tests/test_kernels.py \
        tests/test_sm90_ptx.py tests/test_backend.py -k "per_token or div"
    step no-residual 130 python3 bench/quant_schemes.py --no-residual --schemes per_token \
        --hidden 4096 7168 8192 --tokens 4096 16384
    step add-norm 100 python3 bench/quant_schemes.py --schemes per_token \
        --hidden 4096 7168 --tokens 4096 16384
    step standalone 100 python3 bench/quant_schemes.py --standalone --schemes per_token \
        --hidden 4096 7168 --tokens 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
tiles)
    # the tiled kernels (standalone static / per-group / nvfp4 / per-tensor, phase 2 after
    # a plain norm) with their GPU tests, and whether a (tiles, rows) grid beats their
    # unsigned 32-bit division (thirty-second session: 0%-4% on nvfp4 at 7168 wide)
    step tiled-tests 200 "${PYTEST[@]}" tests \
        -k "standalone or per_tensor or tile or quant_alone or nvfp4"
    step tile-probe 130 python3 bench/tile_index_probe.py --hidden 4096 7168 8192
    # standalone static at 0.987x-0.998x Inductor: whether Inductor's flat form closes it
    # (prepared in the thirty-third session, not yet run)
    step static-flat 90 python3 bench/static_flat_probe.py --hidden 4096 7168 8192
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
gluon)
    # the Gluon prefill: its GPU tests, then (they passed: a slot left unfreed hangs the
    # kernel) by length at both head dims, and issue 4's prefill rows
    step gluon-tests 150 "${PYTEST[@]}" tests/test_attention_gluon.py \
        && step prefill-paths 120 python3 bench/prefill_paths.py --no-epilogues \
        && step prefill-paths-64 120 python3 bench/prefill_paths.py --head-dim 64 \
            --no-epilogues && step attention 180 python3 bench/attention.py --only 0 1 2 3 4 6
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
gluon-sweep)
    # Gluon variants (consumers:registers:stages:block_n[:s<heads a sweep>][:p<persistent>])
    # by length, no epilogue, after the Gluon GPU tests (a slot left unfreed hangs the
    # kernel): head dim 64 causal (the Triton kernel runs it: do the diagonal stop, sweeps
    # of heads, a persistent grid, 64-key tiles or two consumers win it back?) on issue 4's
    # B8 H16 S1024 and by length; head dim 128 short; how attention=auto times its
    # candidates
    step gluon-tests 150 "${PYTEST[@]}" tests/test_attention_gluon.py \
        && step sweep-64-issue 100 python3 bench/prefill_paths.py --head-dim 64 \
            --no-epilogues --tokens 8192 --heads 16 --seqs 1024 --configs 3:160:2:128:p0 \
            3:160:2:128:s1:p0 3:160:2:128:p1 3:160:3:64:p1 2:240:2:128:p1 \
        && step auto-timing 100 python3 bench/auto_timing.py \
        && step sweep-64 120 python3 bench/prefill_paths.py --head-dim 64 --no-epilogues \
            --seqs 512 1024 2048 --configs 3:160:2:128:p0 3:160:2:128:p1 3:160:3:64:p1 \
            2:240:2:128:p1 \
        && step sweep-128 100 python3 bench/prefill_paths.py --no-epilogues \
            --seqs 512 1024 2048 --configs 2:240:2:128:p0 2:240:2:128:p1 2:240:3:64:p1
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
plans)
    # the Gluon prefill's plans (irfuse/lowering/attention_gluon.py): its GPU tests, then
    # issue 4's B8 H16 S1024 D64 causal by variant (two consumers persistent in snake
    # order, the default, against a program an item and three consumers), issue 4's
    # attention rows with the plans, persistent or not at head dim 128, and head dim 64 by
    # length; RESULTS.md copied after each step
    step gluon-tests 150 "${PYTEST[@]}" tests/test_attention_gluon.py || exit 1
    step issue-64 60 python3 bench/prefill_paths.py --head-dim 64 --no-epilogues \
        --tokens 8192 --heads 16 --seqs 1024 --configs 2:240:2:128 2:240:2:128:p0 \
        3:160:2:128:p1
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step attention 180 python3 bench/attention.py --only 3 1 4 6
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step paths-128 90 python3 bench/prefill_paths.py --no-epilogues --seqs 512 1024 4096 \
        --configs 2:240:2:128:p0 2:240:2:128:p1
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step paths-64 60 python3 bench/prefill_paths.py --head-dim 64 --no-epilogues \
        --seqs 512 1024 2048
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
issue-4)
    # after issue-4-check passed: what the static fp8 epilogue costs
    # (bench/epilogue_cost.py), then issue 4's shapes in bench/attention.py, the decode
    # and the short GQA prefill
    step epilogue-cost 120 python3 bench/epilogue_cost.py
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step attention 300 python3 bench/attention.py --only 3 0 1 2 4 5 6
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
issue-4-check)
    # (the Triton prefill's tests last, in the time left: the Gluon file checks both
    # kernels' static div bytes)
    step gluon-tests 150 "${PYTEST[@]}" tests/test_attention_gluon.py || exit 1
    step epilogue-cost 120 python3 bench/epilogue_cost.py
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step attention 120 python3 bench/attention.py --only 3 0
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step attention-tests 170 "${PYTEST[@]}" -rfE tests/test_attention_kernel.py \
        -k "test_gpu_attention or prefill_epilogues or sweeps_over_heads"
    ;;
issue-4-quick)
    # after a change to the static div epilogue, in little device time: both kernels'
    # static div bytes, the epilogue's cost (and fp16's at head dim 64 causal), issue 4's
    # head-dim-64 causal row
    step static-div-tests 120 "${PYTEST[@]}" -rfE tests/test_attention_gluon.py -k static_div \
        || exit 1
    step epilogue-cost 120 python3 bench/epilogue_cost.py
    step epilogue-cost-fp16 90 python3 bench/epilogue_cost.py --only 0 --dtype float16
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step attention 100 python3 bench/attention.py --only 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
coverage)
    # the cells of issue 3's speed table (hidden 4096 / 7168 / 8192, from 4096 tokens) the
    # other stages leave out (first timed over rotating inputs in the thirty-first session)
    step no-residual 130 python3 bench/quant_schemes.py --no-residual \
        --schemes "per_group 128" per_tensor --hidden 4096 7168 8192 --tokens 4096 16384
    step standalone 130 python3 bench/quant_schemes.py --standalone \
        --schemes "per_group 128" per_tensor --hidden 4096 7168 8192 --tokens 4096 16384
    step add-8192 120 python3 bench/quant_schemes.py --hidden 8192 --tokens 4096 16384 \
        --schemes static per_token "per_group 128" nvfp4 per_tensor
    step no-residual-8192 80 python3 bench/quant_schemes.py --no-residual --hidden 8192 \
        --tokens 4096 16384 --schemes static per_token nvfp4
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
nvfp4)
    # rms_norm + nvfp4 holding whole blocks a thread at 4096 columns (quant.WHOLE_BLOCKS):
    # the nvfp4 GPU tests (the attention's epilogues too), the layout probe, then issue 3's
    # rms_norm + nvfp4 rows end to end (nvfp4-more: the rest)
    step nvfp4-tests 120 "${PYTEST[@]}" tests/test_quant_epilogues.py -k "nvfp4 or e2m1"
    step nvfp4-attention 60 "${PYTEST[@]}" tests/test_attention_kernel.py \
        tests/test_attention_fusion.py -k "nvfp4 and (epilogues_match or direct)"
    step layout-probe 90 python3 bench/nvfp4_layout_probe.py
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step no-residual 90 python3 bench/quant_schemes.py --no-residual --schemes nvfp4 \
        --hidden 4096 7168 8192 --tokens 4096 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
pieces)
    # rms_norm + nvfp4 over rows of a few pieces of 1024 columns (kernel_spec.pieces_body):
    # the nvfp4 GPU tests (1031 x 7168 runs the pieces), the probe, then issue 3's rms_norm
    # + nvfp4 rows end to end
    step nvfp4-tests 150 "${PYTEST[@]}" tests/test_quant_epilogues.py -k "nvfp4 or e2m1"
    step pieces-probe 200 python3 bench/nvfp4_pieces_probe.py --hidden 6144 7168 8192 \
        --tokens 1 16 64 256 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step no-residual 90 python3 bench/quant_schemes.py --no-residual --schemes nvfp4 \
        --hidden 4096 7168 8192 --tokens 4096 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
standalone-halves)
    # the standalone nvfp4 quant's 1024-column tiles as halves of blocks
    # (quant.QUANT_WHOLE_BLOCKS): the nvfp4 GPU tests, the layout probe, the tiles at
    # hidden 4096 and 8192 (1024 as halves against 2048), issue 3's standalone nvfp4 rows
    step nvfp4-tests 120 "${PYTEST[@]}" tests/test_quant_epilogues.py -k "nvfp4 or e2m1"
    step layout-probe 120 python3 bench/nvfp4_layout_probe.py --standalone \
        --hidden 7168 4096 --tokens 16 4096 16384 --rounds 5
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step tiles 100 python3 bench/launch_sweep.py --form standalone --schemes nvfp4 \
        --hidden 4096 8192 --tokens 4096 16384 --tiles 1024 2048 --warps 2
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step standalone 230 python3 bench/quant_schemes.py --standalone --schemes nvfp4 \
        --hidden 4096 7168 8192 --tokens 1 16 256 4096 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
rows)
    # rms_norm + nvfp4 / per-token at several rows a program (runtime.rows_per_program_of):
    # its GPU tests, the probe by rows a program and warps at 4096 columns, issue 3's rows
    # end to end (through the graph launch), then the probe of per-token at 8192 (does it
    # carry over?)
    step rows-tests 150 "${PYTEST[@]}" tests/test_quant_epilogues.py \
        tests/test_user_kernels.py -k "several_rows or rows_a_program or nvfp4_scales"
    step rows-probe 200 python3 bench/norm_rows_probe.py --hidden 4096 \
        --tokens 4096 8192 16384 --rows 4 8 --warps 8 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step no-residual 90 python3 bench/quant_schemes.py --no-residual \
        --schemes per_token nvfp4 --hidden 4096 --tokens 4096 8192 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step rows-probe-8192 80 python3 bench/norm_rows_probe.py --hidden 8192 \
        --schemes per_token --tokens 4096 8192 --rows 4 8 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
rows-more)
    # per-token's 8 rows a program on ROWS_WARPS (8) warps: its GPU tests (and the
    # marked-dynamic wrapper tests), then whether its range (4096 to 8191 rows of 4096
    # columns) should grow: the probe at more rows, and at 8192 columns
    step rows-tests 150 "${PYTEST[@]}" tests/test_quant_epilogues.py \
        tests/test_user_kernels.py -k "several_rows or rows_a_program or nvfp4_scales"
    step rows-probe-more 90 python3 bench/norm_rows_probe.py --schemes per_token \
        --hidden 4096 --tokens 8192 12288 16384 --rows 8 --warps 4 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step rows-probe-8192 90 python3 bench/norm_rows_probe.py --schemes per_token \
        --hidden 8192 --tokens 4096 8192 --rows 4 8 --warps 4 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    # Inductor's standalone static quant, which its flat form alone does not explain
    step static-inductor 60 python3 bench/static_flat_probe.py --hidden 4096 --tokens 4096 \
        --show-inductor --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
full-block)
    # rows of exactly BLOCK columns take n_cols as BLOCK (KernelSpec.full_block; sm_90
    # SASS, rms_norm + nvfp4 4096: 792 instructions a thread against 848): the GPU tests of
    # the norm / quant kernels and of Inductor's wrappers that launch them, then the probe
    # against the kernel reading n_cols, without and with the residual add
    step full-block-tests 300 "${PYTEST[@]}" -rfE tests/test_quant_epilogues.py \
        tests/test_user_kernels.py tests/test_kernels.py -m cuda
    step full-block-tests-cpu-form 120 "${PYTEST[@]}" -rfE tests/test_quant_epilogues.py \
        -k "block_columns or several_rows"
    step full-block 200 python3 bench/full_block_probe.py --hidden 4096 8192 \
        --tokens 1024 4096 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step full-block-add 90 python3 bench/full_block_probe.py --add --schemes nvfp4 \
        --hidden 4096 8192 --tokens 4096 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
rows-8192)
    # per-token's 8 rows a program extended to 8192 columns (1.025x / 1.016x a row a
    # program kernel alone at 4096 / 8192 rows): its GPU tests, end to end against a row a
    # program (runtime.ROWS_COLS patched back to 4096 alone), then the standalone static
    # quant at other tiles and warps (Inductor's kernel autotunes 1024x4 against 512x8)
    step rows-tests 150 "${PYTEST[@]}" tests/test_quant_epilogues.py \
        tests/test_user_kernels.py -k "several_rows or rows_a_program"
    E2E=(--no-residual --schemes per_token --hidden 8192 --tokens 2048 4096 6144 8192
         --rounds 5)
    step e2e-8192-rows 90 python3 bench/quant_schemes.py "${E2E[@]}"
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step e2e-8192-a-row 90 python3 -c "import runpy; import irfuse.lowering.runtime as r
r.ROWS_COLS = (4096,)  # argparse reads sys.argv[1:]: the arguments below
runpy.run_path('bench/quant_schemes.py', run_name='__main__')" "${E2E[@]}"
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step static-configs 150 python3 bench/static_flat_probe.py --hidden 4096 7168 8192 \
        --configs 512x8 1024x8 2048x8 512x4 2048x4 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
per-tensor-l2)
    # dynamic per-tensor fp8 (48%-62% of a copy: it reads its input twice) with L2
    # eviction hints, standalone and after rms_norm
    step per-tensor-l2 240 python3 bench/per_tensor_l2_probe.py --hidden 4096 8192 \
        --tokens 2048 4096 8192 16384 --rounds 3
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
static-flat)
    # standalone static at 0.989x-0.998x Inductor: whether Inductor's flat form closes it
    step static-flat 90 python3 bench/static_flat_probe.py --hidden 4096 7168 8192
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
nvfp4-more)
    # issue 3's add + rms_norm + nvfp4 and standalone nvfp4 rows end to end
    step add-norm 250 python3 bench/quant_schemes.py --schemes nvfp4 \
        --hidden 4096 7168 8192 --tokens 1 16 256 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    step standalone 250 python3 bench/quant_schemes.py --standalone --schemes nvfp4 \
        --hidden 4096 7168 8192 --tokens 1 16 256 4096 16384
    cp bench/RESULTS.md "$OUT/RESULTS.md"
    ;;
suite)
    # the whole suite takes three calls on an H100 (2026-12-06: 380 s reached 77% of what
    # suite and epilogues run, 170 s 37% of the attention kernel tests)
    step suite 560 "${PYTEST[@]}" -rfE tests --ignore=tests/test_attention_kernel.py \
        --ignore=tests/test_quant_epilogues.py
    ;;
epilogues)
    step epilogues 560 "${PYTEST[@]}" -rfE tests/test_quant_epilogues.py
    ;;
attention-kernel)
    step attention-kernel 560 "${PYTEST[@]}" -rfE tests/test_attention_kernel.py
    ;;
shards)
    # the tests compile far more than they run: N processes share the GPU and the 16 cores
    # (kernels and Triton's cache on disk are written atomically). A test that times
    # something may be disturbed by the others: rerun a failure alone before believing it.
    # The shards' files stay in $work (8 files at most come back from $OUT): their logs
    # are joined into $OUT/shards.log at the end, which SHARD_LIMIT must leave time for.
    n=${2:-6}
    work=/tmp/irfuse-shards
    rm -rf "$work" && mkdir -p "$work"
    "${PYTEST[@]}" --collect-only tests 2>&1 | grep '::' > "$work/ids.txt"
    echo "$(wc -l < "$work/ids.txt") tests in $n shards"
    awk -v n="$n" -v out="$work" '{ print > (out "/shard" (NR % n) ".ids") }' "$work/ids.txt"
    for ((i = 0; i < n; i++)); do
        mapfile -t ids < "$work/shard$i.ids"
        # -vv (past -q) names each test as it ends: a shard cut off still shows its failures
        (OUT=$work step "shard$i" "${SHARD_LIMIT:-540}" "${PYTEST[@]}" -vv -rfE --tb=short \
            "${ids[@]}") &
    done
    wait
    for ((i = 0; i < n; i++)); do
        echo "===== shard $i"
        grep -v '^DEBUG ' "$work/shard$i.log"  # (the captured logs of failures: noise)
    done > "$OUT/shards.log"
    grep -E '::.* (FAILED|ERROR)' "$OUT/shards.log" | sed 's/ *\[ *[0-9]*%\]$//' | sort -u \
        > "$OUT/failures.txt"
    echo "$(wc -l < "$OUT/failures.txt") failures and errors (failures.txt; shards.log)"
    ;;
*)
    echo "usage: bash bench/gpu_session.sh tests | bench | torchao | rerun | rerun-attention |" \
        "per-group-div | per-token | tiles | gluon | gluon-sweep | plans | issue-4 |" \
        "issue-4-check | issue-4-quick | coverage | nvfp4 | nvfp4-more |" \
        "suite | epilogues | attention-kernel | shards [N] | hf" >&2
    exit 2
    ;;
esac
