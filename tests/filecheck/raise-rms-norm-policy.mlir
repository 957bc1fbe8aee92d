// RUN: irfuse-opt %s --split-input-file -p raise-rms-norm | filecheck %s

// By default a norm is raised where irfuse's kernel beats Inductor's: with a quant
// epilogue to take (each run of the quant passes after it then fuses it).

// A norm no quant reads: left to the inner compiler (its kernel makes the same one pass).
func.func @no_quant(%x: tensor<4x64xbf16>, %res: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xbf16> {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  func.return %y : tensor<4x64xbf16>
}
// CHECK-LABEL: func.func @no_quant
// CHECK-NOT:     irfuse.rms_norm
// CHECK:         func.return

// -----

// A norm a static quant reads: raised.
func.func @quantized(%x: tensor<4x64xbf16>, %res: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @quantized
// CHECK:         irfuse.rms_norm %x, %w
// CHECK:         func.return

// -----

// A sandwich (Gemma's post-attention norm, the residual add, then the quantized norm):
// both are raised, the first for fuse-sandwich-norm to fold into the second's kernel.
func.func @sandwich(%x: tensor<4x64xbf16>, %res: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %a_xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %a_p = aten.call "aten.pow.Tensor_Scalar"(%a_xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %a_m = aten.call "aten.mean.dim"(%a_p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %a_e = aten.call "aten.add.Scalar"(%a_m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_r = aten.call "aten.rsqrt.default"(%a_e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_n = aten.call "aten.mul.Tensor"(%a_xf, %a_r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %a_nw = aten.call "aten.mul.Tensor"(%a_n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %a_y = aten.call "prims.convert_element_type.default"(%a_nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%res, %a_y) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %xf = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @sandwich
// CHECK:         %a_y = irfuse.rms_norm %x, %w
// CHECK:         %h = aten.call "aten.add.Tensor"(%res, %a_y)
// CHECK:         irfuse.rms_norm %h, %w
// CHECK:         func.return

// -----

// The same sandwich as Inductor on CUDA leaves it: the second norm's round trip through
// bf16 before the quant's fp32 cast folded away (its result fp32, unrounded). Both raised.
func.func @sandwich_cuda_unrounded(%x: tensor<4x64xbf16>, %res: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %a_xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %a_p = aten.call "aten.pow.Tensor_Scalar"(%a_xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %a_m = aten.call "aten.mean.dim"(%a_p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %a_e = aten.call "aten.add.Scalar"(%a_m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_r = aten.call "aten.rsqrt.default"(%a_e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_n = aten.call "aten.mul.Tensor"(%a_xf, %a_r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %a_nw = aten.call "aten.mul.Tensor"(%a_n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %a_y = aten.call "prims.convert_element_type.default"(%a_nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%res, %a_y) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %xf = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %yf = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @sandwich_cuda_unrounded
// CHECK:         %a_y = irfuse.rms_norm %x, %w
// CHECK:         %h = aten.call "aten.add.Tensor"(%res, %a_y)
// CHECK:         irfuse.rms_norm %h, %w {{.*}}unrounded
// CHECK:         func.return

// -----

// The same sandwich with its first norm's result also returned: not one kernel, so
// Inductor computes both norms and the add in one kernel; neither is raised.
func.func @sandwich_first_norm_returned(%x: tensor<4x64xbf16>, %res: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>) {
  %a_xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %a_p = aten.call "aten.pow.Tensor_Scalar"(%a_xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %a_m = aten.call "aten.mean.dim"(%a_p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %a_e = aten.call "aten.add.Scalar"(%a_m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_r = aten.call "aten.rsqrt.default"(%a_e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %a_n = aten.call "aten.mul.Tensor"(%a_xf, %a_r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %a_nw = aten.call "aten.mul.Tensor"(%a_n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %a_y = aten.call "prims.convert_element_type.default"(%a_nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%res, %a_y) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %xf = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q, %a_y : tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>
}
// CHECK-LABEL: func.func @sandwich_first_norm_returned
// CHECK-NOT:     irfuse.rms_norm
// CHECK:         func.return

// -----

// Inductor on CUDA folds the norm's round trip through bf16 before the quant's fp32 cast:
// the quant reads the norm's fp32 result through a no-op cast (which the quant matchers
// see through): still the norm's one quant, so it is raised.
func.func @cuda_unrounded_with_its_quant(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<64xbf16>) -> tensor<4x64xf32>
  %yf = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %d = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<1xf32>) -> tensor<4x64xf32>
  %c = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%c) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @cuda_unrounded_with_its_quant
// CHECK:         irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64, fp32_weight_mul, unrounded}
