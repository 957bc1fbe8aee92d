// RUN: irfuse-opt %s -p fuse-add-rms-norm,fuse-rms-norm-quant -t triton | filecheck %s

// The graph's add + rms_norm + a dynamic per-tensor quant: two kernels. Phase 1 (the
// add, the norm of the rounded sum, the amax, each row's rstd), then phase 2 normalises
// residual_out again with that rstd (the plain norm's phase 2, tiles of rows).
func.func @graph_add(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<1xf32>, tensor<?x64xbf16>) {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_tensor>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<1xf32>
  func.return %q, %qs, %h : tensor<?x64xf8E4M3FN>, tensor<1xf32>, tensor<?x64xbf16>
}

// A direct fused_add_rms_norm (the unrounded fp32 sum): phase 1 stores the normalised
// value, phase 2 is the standalone per-tensor quant of it.
func.func @direct(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>, tensor<1xf32>) {
  %q, %h, %qs = irfuse.fused_add_rms_norm %x, %r, %w {eps = 1.0e-06 : f64, quant = #irfuse.quant<per_tensor>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>, tensor<1xf32>
  func.return %q, %h, %qs : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>, tensor<1xf32>
}

// CHECK:      # %q = irfuse.fused_add_rms_norm -> kernel irfuse_add_rounded_rms_norm_amax then irfuse_rms_norm_per_tensor_fp8
// CHECK:      Fuses: add (the sum rounded to the model dtype) + rms_norm + amax (phase 1 of a per_tensor fp8 quant).
// CHECK:      # residual add
// CHECK-NEXT: v += residual
// CHECK:      v = round_to(v, model_dtype, INTERPRET)  # the norm reads the rounded sum
// CHECK:      tl.store(scale_out_ptr + 512 + row, rstd)  # for phase 2
// CHECK:      Fuses: rms_norm (with phase 1's rstd) + per_tensor fp8 quant (phase 2).
// CHECK-NEXT: A tile of a row per program
// CHECK:      # %q = irfuse.fused_add_rms_norm -> kernel irfuse_fused_add_rms_norm_amax_keep then irfuse_quant_per_tensor_fp8
// CHECK:      Fuses: add + rms_norm + amax (phase 1 of a per_tensor fp8 quant) (the unquantized value kept too).
// CHECK-NOT:  round_to(v, model_dtype, INTERPRET)  # the norm reads the rounded sum
// CHECK:      Fuses: per_tensor fp8 quant.
