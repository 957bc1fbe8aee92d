// RUN: irfuse-opt %s -t triton | filecheck %s

// torchao's scales: divided in the value's dtype (the norm's bf16 output), no lower bound.
func.func @f(%x: tensor<?x256xbf16>, %w: tensor<256xbf16>) -> (tensor<?x256xf8E4M3FN>, tensor<?x1xf32>, tensor<?x256xf8E4M3FN>, tensor<?x2xf32>) {
  %q, %s = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64, quant = #irfuse.quant<per_token in_dtype>} : tensor<?x256xbf16>, tensor<256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x1xf32>
  %g, %gs = irfuse.quant %x {quant = #irfuse.quant<per_group 128 in_dtype>} : tensor<?x256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x2xf32>
  func.return %q, %s, %g, %gs : tensor<?x256xf8E4M3FN>, tensor<?x1xf32>, tensor<?x256xf8E4M3FN>, tensor<?x2xf32>
}
// CHECK:      # %q = irfuse.rms_norm -> kernel irfuse_rms_norm_per_token_in_dtype_fp8
// CHECK:      Fuses: rms_norm + per_token in_dtype fp8 quant.
// CHECK:      # epilogue: dynamic per-token fp8, s = dtype(amax / 448), in the value's dtype, no lower bound
// CHECK-NEXT: row_amax = amax_of(v, 0)
// CHECK-NEXT: amax = row_amax
// CHECK-NEXT: s = round_each(tl.math.div_rn(amax, 448.0), model_dtype, INTERPRET)
// CHECK:      if (row_amax * inv_s < 2.0**120) & (s < float("inf")):
// CHECK-NEXT: div_finite(v, s, inv_s, INTERPRET)
// CHECK-NEXT: else:
// CHECK-NEXT: div_by(v, s, inv_s)
// CHECK:      # %g = irfuse.quant -> kernel irfuse_quant_per_group128_in_dtype_fp8
// CHECK:      # epilogue: per-group fp8, groups of 128: s = dtype(amax / 448), in the value's dtype, no lower bound
// CHECK:      s = round_each(tl.math.div_rn(amax_of(groups, 1), 448.0), model_dtype, INTERPRET)
