// RUN: irfuse-opt %s --split-input-file -p fuse-add-rms-norm,fuse-rms-norm-quant | filecheck %s

func.func @add_norm_quant(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @add_norm_quant
// CHECK-NEXT:    %q, %h = irfuse.fused_add_rms_norm %x, %r, %w scale %s {eps = 1.000000e-06 : f64, quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %q, %h

// -----

// The normalised value is also returned unquantized: the quant stays separate.
func.func @norm_read_twice(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %y : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @norm_read_twice
// CHECK-NEXT:    irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64} :
// CHECK-NEXT:    irfuse.quant %y scale %s

// -----

// No kernel for a per-token epilogue yet: refused, IR unchanged.
func.func @per_token(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<?x1xf32>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_token>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
  func.return %q, %qs : tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
}
// CHECK-LABEL: func.func @per_token
// CHECK-NEXT:    irfuse.rms_norm
// CHECK-NEXT:    irfuse.quant %y {quant = #irfuse.quant<per_token>}
