// RUN: irfuse-opt %s --split-input-file -p fuse-add-rms-norm,fuse-rms-norm-quant | filecheck %s

func.func @add_norm_quant(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @add_norm_quant
// CHECK-NEXT:    %q, %h = irfuse.fused_add_rms_norm %x, %r, %w scale %s {eps = 1.000000e-06 : f64, rounded_sum, quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %q, %h

// -----

// eps read at run time (a float compiled dynamic) goes with the norm into both fusions.
func.func @runtime_eps(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>, %eps: tensor<f64> {irfuse.host_scalar}, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w eps(%eps : tensor<f64>) : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @runtime_eps
// CHECK-NEXT:    %q, %h = irfuse.fused_add_rms_norm %x, %r, %w eps(%eps : tensor<f64>) scale %s {rounded_sum, quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %q, %h

// -----

// The normalised value is also returned unquantized: the fused kernel keeps it too.
func.func @norm_read_twice(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %y : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @norm_read_twice
// CHECK-NEXT:    %q, %y = irfuse.rms_norm %x, %w scale %s {eps = 1.000000e-06 : f64, quant = #irfuse.quant<static>} : tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN> value tensor<?x64xbf16>
// CHECK-NEXT:    func.return %q, %y

// -----

// A per-token epilogue: the scale becomes a result of the norm.
func.func @per_token(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<?x1xf32>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_token>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
  func.return %q, %qs : tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
}
// CHECK-LABEL: func.func @per_token
// CHECK-NEXT:    %q, %qs = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64, quant = #irfuse.quant<per_token>} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x1xf32>

// -----

// A dynamic per-tensor quant fuses into a plain norm (two kernels at run time).
func.func @per_tensor(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<1xf32>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_tensor>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<1xf32>
  func.return %q, %qs : tensor<?x64xf8E4M3FN>, tensor<1xf32>
}
// CHECK-LABEL: func.func @per_tensor
// CHECK-NEXT:    %q, %qs = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64, quant = #irfuse.quant<per_tensor>}
// CHECK-NEXT:    func.return %q, %qs

// -----

// After a residual add too (the first kernel also stores the value the second reads).
func.func @add_per_tensor(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<1xf32>, tensor<?x64xbf16>) {
  %y, %h = irfuse.fused_add_rms_norm %x, %r, %w {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>, tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_tensor>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<1xf32>
  func.return %q, %qs, %h : tensor<?x64xf8E4M3FN>, tensor<1xf32>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @add_per_tensor
// CHECK-NEXT:    %q, %h, %qs = irfuse.fused_add_rms_norm %x, %r, %w {eps = 1.000000e-06 : f64, quant = #irfuse.quant<per_tensor>}
// CHECK-NEXT:    func.return %q, %qs, %h

// -----

// nvfp4 epilogue of a fused add: out, residual_out, block scales.
func.func @add_nvfp4(%x: tensor<256x64xbf16>, %r: tensor<256x64xbf16>, %w: tensor<64xbf16>, %gs: tensor<1xf32>) -> (tensor<256x32xui8>, tensor<256x1xi32>, tensor<256x64xbf16>) {
  %y, %h = irfuse.fused_add_rms_norm %x, %r, %w {eps = 1.0e-06 : f64} : tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64xbf16> -> tensor<256x64xbf16>, tensor<256x64xbf16>
  %q, %sf = irfuse.quant %y scale %gs {quant = #irfuse.quant<nvfp4>} : tensor<256x64xbf16>, tensor<1xf32> -> tensor<256x32xui8>, tensor<256x1xi32>
  func.return %q, %sf, %h : tensor<256x32xui8>, tensor<256x1xi32>, tensor<256x64xbf16>
}
// CHECK-LABEL: func.func @add_nvfp4
// CHECK-NEXT:    %q, %h, %sf = irfuse.fused_add_rms_norm %x, %r, %w scale %gs {eps = 1.000000e-06 : f64, quant = #irfuse.quant<nvfp4>} : tensor<256x64xbf16>, tensor<256x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<256x32xui8>, tensor<256x64xbf16>, tensor<256x1xi32>

// -----

// A quant of the [B, S, K] norm result whose type is flattened to [B*S, K] (raised
// through a linear's flatten): the fused norm's quantized result keeps that type.
func.func @flattened_quant(%x: tensor<2x3x64xbf16>, %w: tensor<64xbf16>) -> (tensor<6x64xf8E4M3FN>, tensor<6x1xf32>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<2x3x64xbf16>, tensor<64xbf16> -> tensor<2x3x64xbf16>
  %q, %s = irfuse.quant %y {quant = #irfuse.quant<per_token>} : tensor<2x3x64xbf16> -> tensor<6x64xf8E4M3FN>, tensor<6x1xf32>
  func.return %q, %s : tensor<6x64xf8E4M3FN>, tensor<6x1xf32>
}
// CHECK-LABEL: func.func @flattened_quant
// CHECK-NEXT:    %q, %s = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64, quant = #irfuse.quant<per_token>} : tensor<2x3x64xbf16>, tensor<64xbf16> -> tensor<6x64xf8E4M3FN>, tensor<6x1xf32>
// CHECK-NEXT:    func.return %q, %s

// -----

// The sum is also read inside a region (irfuse-opt input; the graphs torch.compile
// imports have none): the fused op goes before that reader, as before any other.
// CHECK-LABEL: func.func @sum_read_in_a_region
// CHECK:         irfuse.fused_add_rms_norm
// CHECK:         scf.execute_region
func.func @sum_read_in_a_region(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>) {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %y = irfuse.rms_norm %h, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
  %z = scf.execute_region -> (tensor<4x64xbf16>) {
    %u = aten.call "aten.mul.Tensor"(%h, %h) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
    scf.yield %u : tensor<4x64xbf16>
  }
  func.return %q, %z : tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>
}

// -----

// A norm inside a region, its add outside: not one block, left as it is.
// CHECK-LABEL: func.func @norm_in_a_region
// CHECK:         aten.call "aten.add.Tensor"
// CHECK:         irfuse.rms_norm
func.func @norm_in_a_region(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>) -> tensor<4x64xbf16> {
  %h = aten.call "aten.add.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %z = scf.execute_region -> (tensor<4x64xbf16>) {
    %y = irfuse.rms_norm %h, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
    scf.yield %y : tensor<4x64xbf16>
  }
  func.return %z : tensor<4x64xbf16>
}
