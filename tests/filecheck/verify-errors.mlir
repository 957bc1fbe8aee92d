// RUN: irfuse-opt %s --split-input-file --verify-diagnostics | filecheck %s

// Bad IR gets a diagnostic naming the problem, never an internal error. (xDSL's
// --verify-diagnostics prints each diagnostic and goes on: the CHECK lines check them.)

func.func @quant_of_a_scalar(%x: tensor<bf16>) {
  // CHECK: Operation does not verify: quant input must have a hidden dim, got a 0-d tensor
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 128>} : tensor<bf16> -> tensor<f8E4M3FN>, tensor<f32>
  func.return
}

// -----

func.func @norm_of_a_scalar(%x: tensor<bf16>, %w: tensor<1xbf16>) {
  // CHECK: Operation does not verify: norm input must have a hidden dim, got a 0-d tensor
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<bf16>, tensor<1xbf16> -> tensor<bf16>
  func.return
}

// -----

func.func @negative_eps(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: eps must be non-negative, got -1e-06
  %y = irfuse.rms_norm %x, %w {eps = -1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  func.return
}

// -----

func.func @no_kv_heads(%q: tensor<1x4x8x64xf16>, %k: tensor<1x0x8x64xf16>) {
  // CHECK: Operation does not verify: query heads 4 not a multiple of kv heads 0
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x4x8x64xf16>, tensor<1x0x8x64xf16>, tensor<1x0x8x64xf16> -> tensor<1x4x8x64xf16>
  func.return
}

// -----

func.func @per_token_of_heads(%q: tensor<1x2x1x64xf16>) {
  // CHECK: Operation does not verify: a per_token quant of [B, Sq, Hq*Dv] rows needs layout bs_hd
  %o, %s = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bhsd", quant = #irfuse.quant<per_token>} : tensor<1x2x1x64xf16>, tensor<1x2x1x64xf16>, tensor<1x2x1x64xf16> -> tensor<1x2x1x64xf8E4M3FN>, tensor<1x1x1xf32>
  func.return
}

// -----

func.func @batch_mismatch(%q: tensor<2x4x8x64xf16>, %k: tensor<3x4x8x64xf16>) {
  // CHECK: Operation does not verify: batch sizes of q, k, v differ: 2, 3, 3
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<2x4x8x64xf16>, tensor<3x4x8x64xf16>, tensor<3x4x8x64xf16> -> tensor<2x4x8x64xf16>
  func.return
}

// -----

func.func @output_shape(%q: tensor<1x4x8x64xf16>) {
  // CHECK: Operation does not verify: output shape [1, 8, 4, 64] is not [1, 4, 8, 64]
  %o = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16> -> tensor<1x8x4x64xf16>
  func.return
}

// -----

func.func @mask_broadcast(%q: tensor<1x4x8x64xf16>, %m: tensor<3x1x8x8xi1>) {
  // CHECK: Operation does not verify: mask [3, 1, 8, 8] does not broadcast to [1, 4, 8, 8]
  %o = irfuse.attention %q, %q, %q mask %m {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16> mask tensor<3x1x8x8xi1> -> tensor<1x4x8x64xf16>
  func.return
}

// -----

// A valid case after the bad ones is still checked.
func.func @fine(%x: tensor<4x64xbf16>) -> tensor<4x64xf8E4M3FN> {
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK: func.func @fine

// -----

func.func @per_token_scales_per_group(%x: tensor<4x256xbf16>) {
  // CHECK: Operation does not verify: 'per_token' scales of a [4, 256] output are [4, 1], got [4, 2]
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
  func.return
}

// -----

func.func @per_group_scale_count(%x: tensor<?x256xbf16>) {
  // CHECK: Operation does not verify: 'per_group 64 col' scales of a [?, 256] output are [?, 4], got [?, 2]
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 64 col>} : tensor<?x256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x2xf32>
  func.return
}

// -----

func.func @per_tensor_scale_per_row(%x: tensor<4x64xbf16>) {
  // CHECK: Operation does not verify: 'per_tensor' scales of a [4, 64] output are [] or [1] or [1, 1], got [4, 1]
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_tensor>} : tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
  func.return
}

// -----

func.func @nvfp4_unswizzled_scales(%x: tensor<64x128xbf16>, %g: tensor<1xf32>) {
  // CHECK: Operation does not verify: 'nvfp4' scales of a [64, 64] output are [128, 2], got [64, 8]
  %q, %s = irfuse.quant %x scale %g {quant = #irfuse.quant<nvfp4>} : tensor<64x128xbf16>, tensor<1xf32> -> tensor<64x64xui8>, tensor<64x8xi32>
  func.return
}

// -----

func.func @nvfp4_output_width(%x: tensor<64x128xbf16>, %g: tensor<1xf32>) {
  // CHECK: Operation does not verify: nvfp4 output [64, 7] is not the packed [64, 128]
  %q, %s = irfuse.quant %x scale %g {quant = #irfuse.quant<nvfp4>} : tensor<64x128xbf16>, tensor<1xf32> -> tensor<64x7xui8>, tensor<128x8xi32>
  func.return
}

// -----

func.func @nvfp4_hidden_not_of_blocks(%x: tensor<64x100xbf16>, %g: tensor<1xf32>) {
  // CHECK: Operation does not verify: nvfp4 quantizes [T, K] rows, K a multiple of 16: got [64, 100]
  %q, %s = irfuse.quant %x scale %g {quant = #irfuse.quant<nvfp4>} : tensor<64x100xbf16>, tensor<1xf32> -> tensor<64x50xui8>, tensor<128x8xi32>
  func.return
}

// -----

func.func @nvfp4_byte_scales(%x: tensor<64x128xbf16>, %g: tensor<1xf32>) {
  // CHECK: Operation does not verify: nvfp4 block scales must be i32, got f8E4M3FN
  %q, %s = irfuse.quant %x scale %g {quant = #irfuse.quant<nvfp4>} : tensor<64x128xbf16>, tensor<1xf32> -> tensor<64x64xui8>, tensor<128x8xf8E4M3FN>
  func.return
}

// -----

func.func @flattened_rows_miscounted(%x: tensor<2x3x64xbf16>) {
  // CHECK: Operation does not verify: output shape [5, 64] is neither the input's [2, 3, 64] nor, quantized, its token dims flattened
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<2x3x64xbf16> -> tensor<5x64xf8E4M3FN>, tensor<5x1xf32>
  func.return
}

// -----

func.func @kept_value_of_another_shape(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: `value` has the input's shape [4, 64], got [4, 32]
  %q, %s, %v = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64, quant = #irfuse.quant<per_token>} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32> value tensor<4x32xbf16>
  func.return
}

// -----

func.func @mla_weights_of_other_heads(%q: tensor<4x2x48xbf16>, %kv: tensor<9x64xbf16>, %pe: tensor<9x1x16xbf16>, %wk: tensor<3x32x64xbf16>, %wv: tensor<2x64x32xbf16>) {
  // CHECK: Operation does not verify: w_uk / w_uv must have q's heads (dim 0)
  %m = irfuse.mla_attention %q, %kv, %pe, %wk, %wv {scale = 0.125 : f64} : tensor<4x2x48xbf16>, tensor<9x64xbf16>, tensor<9x1x16xbf16>, tensor<3x32x64xbf16>, tensor<2x64x32xbf16> -> tensor<4x64xbf16>
  func.return
}

// -----

func.func @mla_rope_keys_miscounted(%q: tensor<4x2x48xbf16>, %kv: tensor<9x64xbf16>, %pe: tensor<8x1x16xbf16>, %wk: tensor<2x32x64xbf16>, %wv: tensor<2x64x32xbf16>) {
  // CHECK: Operation does not verify: k_pe must be [Tk, 1, Dr], Tk kv_c's rows
  %m = irfuse.mla_attention %q, %kv, %pe, %wk, %wv {scale = 0.125 : f64} : tensor<4x2x48xbf16>, tensor<9x64xbf16>, tensor<8x1x16xbf16>, tensor<2x32x64xbf16>, tensor<2x64x32xbf16> -> tensor<4x64xbf16>
  func.return
}

// -----

func.func @mla_output_per_head(%q: tensor<4x2x48xbf16>, %kv: tensor<9x64xbf16>, %pe: tensor<9x1x16xbf16>, %wk: tensor<2x32x64xbf16>, %wv: tensor<2x64x32xbf16>) {
  // CHECK: Operation does not verify: output must be [T, N*Dv] = [4, 64], got tensor<4x2x32xbf16>
  %m = irfuse.mla_attention %q, %kv, %pe, %wk, %wv {scale = 0.125 : f64} : tensor<4x2x48xbf16>, tensor<9x64xbf16>, tensor<9x1x16xbf16>, tensor<2x32x64xbf16>, tensor<2x64x32xbf16> -> tensor<4x2x32xbf16>
  func.return
}

// -----

func.func @merge_lse_transposed(%o: tensor<4x2x32xbf16>, %l: tensor<4x2xf32>) {
  // CHECK: Operation does not verify: p_lse must be [H, T] = [2, 4] of p_out, got tensor<4x2xf32>
  %mo, %ml = irfuse.merge_attn_states %o, %l, %o, %l : tensor<4x2x32xbf16>, tensor<4x2xf32>, tensor<4x2x32xbf16>, tensor<4x2xf32> -> tensor<4x2x32xbf16>, tensor<4x2xf32>
  func.return
}

// -----

func.func @merge_output_of_another_shape(%o: tensor<4x2x32xbf16>, %l: tensor<2x4xf32>) {
  // CHECK: Operation does not verify: output must be p_out's [T, H, D], got tensor<4x32xbf16>
  %mo, %ml = irfuse.merge_attn_states %o, %l, %o, %l : tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<4x2x32xbf16>, tensor<2x4xf32> -> tensor<4x32xbf16>, tensor<2x4xf32>
  func.return
}

// -----

func.func @post_norm_residual_of_another_shape(%x: tensor<4x64xbf16>, %r: tensor<64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) {
  // CHECK: Operation does not verify: residual tensor<64xbf16> must match the input tensor<4x64xbf16>
  %q, %h = irfuse.rms_norm_add %x, %r, %w scale %s {eps = 1.0e-06 : f64, quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>
  func.return
}

// -----

func.func @post_norm_sum_of_another_type(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) {
  // CHECK: Operation does not verify: residual_out must have the input's type
  %q, %h = irfuse.rms_norm_add %x, %r, %w scale %s {eps = 1.0e-06 : f64, quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<4x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>, tensor<4x64xf32>
  func.return
}

// -----

func.func @merge_of_a_scheme_it_has_no_semantics_for(%o: tensor<4x2x32xbf16>, %l: tensor<2x4xf32>) {
  // CHECK: Operation does not verify: a merge's output quant is <static>, got <per_token>
  %mo, %ml, %ms = irfuse.merge_attn_states %o, %l, %o, %l {quant = #irfuse.quant<per_token>} : tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<4x2x32xbf16>, tensor<2x4xf32> -> tensor<8x32xf8E4M3FN>, tensor<2x4xf32>, tensor<8x1xf32>
  func.return
}

// -----

func.func @merge_dividing_by_its_scale(%o: tensor<4x2x32xbf16>, %l: tensor<2x4xf32>, %s: tensor<1xf32>) {
  // CHECK: Operation does not verify: a merge's output quant is <static>, got <static div>
  %mo, %ml = irfuse.merge_attn_states %o, %l, %o, %l scale %s {quant = #irfuse.quant<static div>} : tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<4x2x32xbf16>, tensor<2x4xf32>, tensor<1xf32> -> tensor<4x2x32xf8E4M3FN>, tensor<2x4xf32>
  func.return
}

// -----

func.func @mla_nvfp4_rows_not_a_multiple_of_16(%q: tensor<4x1x48xbf16>, %kv: tensor<9x64xbf16>, %pe: tensor<9x1x16xbf16>, %wk: tensor<1x32x64xbf16>, %wv: tensor<1x64x6xbf16>, %s: tensor<1xf32>) {
  // CHECK: Operation does not verify: nvfp4 quantizes rows of a multiple of 16: N*Dv is 6
  %m, %ms = irfuse.mla_attention %q, %kv, %pe, %wk, %wv scale %s {scale = 0.1 : f64, quant = #irfuse.quant<nvfp4>} : tensor<4x1x48xbf16>, tensor<9x64xbf16>, tensor<9x1x16xbf16>, tensor<1x32x64xbf16>, tensor<1x64x6xbf16>, tensor<1xf32> -> tensor<4x3xui8>, tensor<128x1xi32>
  func.return
}

// -----

func.func @all_reduce_of_integers(%x: tensor<4x8xi32>) {
  // CHECK: Operation does not verify: x must be bf16, f16 or f32, got i32
  %y = irfuse.all_reduce %x {group = "tp"} : tensor<4x8xi32> -> tensor<4x8xi32>
  func.return
}

// -----

func.func @all_reduce_norm_negative_eps(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: eps must be non-negative, got -1.0
  %y = irfuse.all_reduce_rms_norm %x, %w {group = "tp", eps = -1.0 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  func.return
}

// -----

func.func @all_reduce_norm_residual_of_another_type(%x: tensor<4x64xbf16>, %r: tensor<3x5xf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: residual must have the input's type tensor<4x64xbf16>, got tensor<3x5xf16>
  %y, %ro = irfuse.all_reduce_rms_norm %x residual %r, %w {group = "tp", eps = 1.0e-06 : f64} : tensor<4x64xbf16> residual tensor<3x5xf16>, tensor<64xbf16> -> tensor<4x64xbf16> residual tensor<4x64xbf16>
  func.return
}

// -----

func.func @all_reduce_norm_residual_out_of_another_type(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: residual_out must have the input's type tensor<4x64xbf16>, got tensor<1xi8>
  %y, %ro = irfuse.all_reduce_rms_norm %x residual %r, %w {group = "tp", eps = 1.0e-06 : f64} : tensor<4x64xbf16> residual tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16> residual tensor<1xi8>
  func.return
}

// -----

func.func @all_reduce_norm_output_of_another_shape(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // CHECK: Operation does not verify: output shape [7, 9] is neither the input's [4, 64] nor, quantized, its token dims flattened
  %y = irfuse.all_reduce_rms_norm %x, %w {group = "tp", eps = 1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<7x9xbf16>
  func.return
}
