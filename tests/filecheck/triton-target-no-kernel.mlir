// RUN: irfuse-opt %s --split-input-file -t triton | filecheck %s

// IR with no irfuse op gets a line saying so, not an empty output.
// CHECK: # no irfuse op here lowers to a kernel
func.func @f(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  func.return %x : tensor<4x8xf32>
}

// -----

// Shapes the kernels do not take (the runtime would refuse them) are named, not emitted.
// CHECK: # %q = irfuse.rms_norm: no kernel for the shape [4, 131072] (hidden size <= 65536)
// CHECK-NOT: def irfuse_
func.func @too_wide(%x: tensor<4x131072xbf16>, %w: tensor<131072xbf16>, %s: tensor<1xf32>) -> tensor<4x131072xf8E4M3FN> {
  %q = irfuse.rms_norm %x, %w scale %s {eps = 1.0e-06 : f64, quant = #irfuse.quant<static>} : tensor<4x131072xbf16>, tensor<131072xbf16>, tensor<1xf32> -> tensor<4x131072xf8E4M3FN>
  func.return %q : tensor<4x131072xf8E4M3FN>
}

// -----

// CHECK: # %q = irfuse.quant: column-major group scales: kernels for [T, K] only, got [2, 4, 128]
// CHECK-NOT: def irfuse_
func.func @column_major_3d(%x: tensor<2x4x128xbf16>) -> tensor<2x4x128xf8E4M3FN> {
  %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 128 col>} : tensor<2x4x128xbf16> -> tensor<2x4x128xf8E4M3FN>, tensor<2x4x1xf32>
  func.return %q : tensor<2x4x128xf8E4M3FN>
}
