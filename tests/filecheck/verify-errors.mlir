// RUN: irfuse-opt %s --split-input-file --verify-diagnostics | filecheck %s

// Bad IR gets a diagnostic naming the problem, never an internal error.

func.func @quant_of_a_scalar(%x: tensor<bf16>) {
  // expected-error @+1 {{quant input must have a hidden dim, got a 0-d tensor}}
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 128>} : tensor<bf16> -> tensor<f8E4M3FN>, tensor<f32>
  func.return
}

// -----

func.func @norm_of_a_scalar(%x: tensor<bf16>, %w: tensor<1xbf16>) {
  // expected-error @+1 {{norm input must have a hidden dim, got a 0-d tensor}}
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<bf16>, tensor<1xbf16> -> tensor<bf16>
  func.return
}

// -----

func.func @negative_eps(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) {
  // expected-error @+1 {{eps must be non-negative, got -1e-06}}
  %y = irfuse.rms_norm %x, %w {eps = -1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  func.return
}

// -----

func.func @no_kv_heads(%q: tensor<1x4x8x64xf16>, %k: tensor<1x0x8x64xf16>) {
  // expected-error @+1 {{query heads 4 not a multiple of kv heads 0}}
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x4x8x64xf16>, tensor<1x0x8x64xf16>, tensor<1x0x8x64xf16> -> tensor<1x4x8x64xf16>
  func.return
}

// -----

func.func @per_token_of_heads(%q: tensor<1x2x1x64xf16>) {
  // expected-error @+1 {{a per_token quant of [B, Sq, Hq*Dv] rows needs layout bs_hd}}
  %o, %s = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bhsd", quant = #irfuse.quant<per_token>} : tensor<1x2x1x64xf16>, tensor<1x2x1x64xf16>, tensor<1x2x1x64xf16> -> tensor<1x2x1x64xf8E4M3FN>, tensor<1x1x1xf32>
  func.return
}

// -----

func.func @batch_mismatch(%q: tensor<2x4x8x64xf16>, %k: tensor<3x4x8x64xf16>) {
  // expected-error @+1 {{batch sizes of q, k, v differ: 2, 3, 3}}
  %o = irfuse.attention %q, %k, %k {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<2x4x8x64xf16>, tensor<3x4x8x64xf16>, tensor<3x4x8x64xf16> -> tensor<2x4x8x64xf16>
  func.return
}

// -----

func.func @output_shape(%q: tensor<1x4x8x64xf16>) {
  // expected-error @+1 {{output shape [1, 8, 4, 64] is not [1, 4, 8, 64]}}
  %o = irfuse.attention %q, %q, %q {scale = 0.125 : f64, causal = "none", layout = "bhsd"} : tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16>, tensor<1x4x8x64xf16> -> tensor<1x8x4x64xf16>
  func.return
}

// -----

func.func @mask_broadcast(%q: tensor<1x4x8x64xf16>, %m: tensor<3x1x8x8xi1>) {
  // expected-error @+1 {{mask [3, 1, 8, 8] does not broadcast to [1, 4, 8, 8]}}
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
