// RUN: irfuse-opt %s --split-input-file -p 'raise-rms-norm{standalone=true}' | filecheck %s

// F.rms_norm as Inductor's post-grad graph has it: weight multiplied in fp32.
func.func @inductor_form(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> tensor<?x64xbf16> {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x64xbf16>) -> tensor<?x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 9.9999999747524271e-07 : f64], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<?x1xf32>) -> tensor<?x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<64xbf16>) -> tensor<?x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xbf16>
  func.return %y : tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @inductor_form
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w {eps = 9.9999999747524271e-07 : f64, fp32_weight_mul} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
// CHECK-NEXT:    func.return

// -----

// HF LlamaRMSNorm (AOT form): cast back first, weight on the left, eps 1e-5.
func.func @hf_form(%x: tensor<8x96xf16>, %w: tensor<96xf16>) -> tensor<8x96xf16> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<8x96xf16>) -> tensor<8x96xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x1xf32>
  %e = aten.call "aten.add.Tensor"(%m) {args = [#aten.ref<0>, 1.0e-05 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x1xf32>) -> tensor<8x96xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = f16}} : (tensor<8x96xf32>) -> tensor<8x96xf16>
  %y = aten.call "aten.mul.Tensor"(%w, %nb) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<96xf16>, tensor<8x96xf16>) -> tensor<8x96xf16>
  func.return %y : tensor<8x96xf16>
}
// CHECK-LABEL: func.func @hf_form
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w {eps = 1.000000e-05 : f64} : tensor<8x96xf16>, tensor<96xf16> -> tensor<8x96xf16>
// CHECK-NEXT:    func.return

// -----

// An fp32 weight on a bf16 input promotes the result to fp32: not an rms_norm of the input dtype.
func.func @weight_dtype_mismatch(%x: tensor<8x96xbf16>, %w: tensor<96xf32>) -> tensor<8x96xf32> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<8x96xbf16>) -> tensor<8x96xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x1xf32>
  %e = aten.call "aten.add.Tensor"(%m) {args = [#aten.ref<0>, 1.0e-05 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x1xf32>) -> tensor<8x96xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = bf16}} : (tensor<8x96xf32>) -> tensor<8x96xbf16>
  %y = aten.call "aten.mul.Tensor"(%w, %nb) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<96xf32>, tensor<8x96xbf16>) -> tensor<8x96xf32>
  func.return %y : tensor<8x96xf32>
}
// CHECK-LABEL: func.func @weight_dtype_mismatch
// CHECK-NOT:     irfuse.rms_norm
// CHECK:         aten.call "aten.rsqrt.default"

// -----

// Inductor on CUDA folds the round trip through bf16 before the quant's fp32 cast: the
// norm result stays fp32 (unrounded), and so does the raised op's result.
func.func @inductor_cuda_unrounded(%x: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> tensor<?x64xf32> {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x64xbf16>) -> tensor<?x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<?x1xf32>) -> tensor<?x64xf32>
  %nw = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<64xbf16>) -> tensor<?x64xf32>
  %y = aten.call "prims.convert_element_type.default"(%nw) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  func.return %y : tensor<?x64xf32>
}
// CHECK-LABEL: func.func @inductor_cuda_unrounded
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64, fp32_weight_mul, unrounded} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf32>
// CHECK-NEXT:    func.return

// -----

// T5LayerNorm (AOT form): the product reads x itself, promoted by the fp32 rsqrt.
func.func @t5_form(%x: tensor<8x96xbf16>, %w: tensor<96xbf16>) -> tensor<8x96xbf16> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<8x96xbf16>) -> tensor<8x96xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x1xf32>
  %e = aten.call "aten.add.Tensor"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %n = aten.call "aten.mul.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xbf16>, tensor<8x1xf32>) -> tensor<8x96xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = bf16}} : (tensor<8x96xf32>) -> tensor<8x96xbf16>
  %y = aten.call "aten.mul.Tensor"(%w, %nb) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<96xbf16>, tensor<8x96xbf16>) -> tensor<8x96xbf16>
  func.return %y : tensor<8x96xbf16>
}
// CHECK-LABEL: func.func @t5_form
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64} : tensor<8x96xbf16>, tensor<96xbf16> -> tensor<8x96xbf16>
// CHECK-NEXT:    func.return

// -----

// The square written `xf * xf`.
func.func @square_by_mul(%x: tensor<8x96xbf16>, %w: tensor<96xbf16>) -> tensor<8x96xbf16> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<8x96xbf16>) -> tensor<8x96xf32>
  %p = aten.call "aten.mul.Tensor"(%xf, %xf) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x96xf32>) -> tensor<8x96xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x1xf32>
  %e = aten.call "aten.add.Tensor"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x1xf32>) -> tensor<8x96xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = bf16}} : (tensor<8x96xf32>) -> tensor<8x96xbf16>
  %y = aten.call "aten.mul.Tensor"(%nb, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xbf16>, tensor<96xbf16>) -> tensor<8x96xbf16>
  func.return %y : tensor<8x96xbf16>
}
// CHECK-LABEL: func.func @square_by_mul
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w {eps = 1.000000e-06 : f64} : tensor<8x96xbf16>, tensor<96xbf16> -> tensor<8x96xbf16>
// CHECK-NEXT:    func.return

// -----

// vLLM's native RMSNorm with a residual (Inductor's form): the sum kept in fp32 for the
// norm and rounded back for the residual stream. It is fused_add_rms_norm of the bf16
// operands with the unrounded sum (no rounded_sum), its residual_out the rounded sum.
func.func @vllm_fp32_sum(%x: tensor<8x96xbf16>, %r: tensor<8x96xbf16>, %w: tensor<96xbf16>) -> (tensor<8x96xbf16>, tensor<8x96xbf16>) {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<8x96xbf16>) -> tensor<8x96xf32>
  %rf = aten.call "prims.convert_element_type.default"(%r) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<8x96xbf16>) -> tensor<8x96xf32>
  %h = aten.call "aten.add.Tensor"(%xf, %rf) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x96xf32>) -> tensor<8x96xf32>
  %hb = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xbf16>
  %p = aten.call "aten.pow.Tensor_Scalar"(%h) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x1xf32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %rs = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %n = aten.call "aten.mul.Tensor"(%h, %rs) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xf32>, tensor<8x1xf32>) -> tensor<8x96xf32>
  %nb = aten.call "prims.convert_element_type.default"(%n) {args = [#aten.ref<0>, bf16], kwargs = {}} : (tensor<8x96xf32>) -> tensor<8x96xbf16>
  %y = aten.call "aten.mul.Tensor"(%nb, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x96xbf16>, tensor<96xbf16>) -> tensor<8x96xbf16>
  func.return %y, %hb : tensor<8x96xbf16>, tensor<8x96xbf16>
}
// CHECK-LABEL: func.func @vllm_fp32_sum
// CHECK-NEXT:    %y, %h = irfuse.fused_add_rms_norm %x, %r, %w {eps = 1.000000e-06 : f64} : tensor<8x96xbf16>, tensor<8x96xbf16>, tensor<96xbf16> -> tensor<8x96xbf16>, tensor<8x96xbf16>
// CHECK-NEXT:    func.return %y, %h

// -----

// HF's `self.variance_epsilon` under torch.compile(dynamic=True): a 0-d f64 CPU tensor
// input (the importer marks it irfuse.host_scalar), cast to f32 before the add. The norm
// reads it at run time through its eps operand; the casts go.
func.func @host_scalar_eps(%x: tensor<?x64xf16>, %eps: tensor<f64> {irfuse.host_scalar}, %w: tensor<64xf16>) -> tensor<?x64xf16> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<?x64xf16>) -> tensor<?x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x1xf32>
  %e64 = aten.call "prims.convert_element_type.default"(%eps) {args = [#aten.ref<0>, f64], kwargs = {}} : (tensor<f64>) -> tensor<f64>
  %e32 = aten.call "prims.convert_element_type.default"(%e64) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<f64>) -> tensor<f32>
  %e = aten.call "aten.add.Tensor"(%m, %e32) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x1xf32>, tensor<f32>) -> tensor<?x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<?x1xf32>) -> tensor<?x64xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = f16}} : (tensor<?x64xf32>) -> tensor<?x64xf16>
  %y = aten.call "aten.mul.Tensor"(%w, %nb) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<64xf16>, tensor<?x64xf16>) -> tensor<?x64xf16>
  func.return %y : tensor<?x64xf16>
}
// CHECK-LABEL: func.func @host_scalar_eps
// CHECK-NEXT:    %{{.*}} = irfuse.rms_norm %x, %w eps(%eps : tensor<f64>) : tensor<?x64xf16>, tensor<64xf16> -> tensor<?x64xf16>
// CHECK-NEXT:    func.return

// -----

// The same eps as an unmarked tensor input (it may live on the GPU: reading it would
// sync): left alone.
func.func @device_tensor_eps(%x: tensor<?x64xf16>, %eps: tensor<f32>, %w: tensor<64xf16>) -> tensor<?x64xf16> {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<?x64xf16>) -> tensor<?x64xf32>
  %p = aten.call "aten.pow.Tensor_Scalar"(%xf) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x64xf32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x64xf32>) -> tensor<?x1xf32>
  %e = aten.call "aten.add.Tensor"(%m, %eps) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x1xf32>, tensor<f32>) -> tensor<?x1xf32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %n = aten.call "aten.mul.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xf32>, tensor<?x1xf32>) -> tensor<?x64xf32>
  %nb = aten.call "aten._to_copy.default"(%n) {args = [#aten.ref<0>], kwargs = {dtype = f16}} : (tensor<?x64xf32>) -> tensor<?x64xf16>
  %y = aten.call "aten.mul.Tensor"(%w, %nb) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<64xf16>, tensor<?x64xf16>) -> tensor<?x64xf16>
  func.return %y : tensor<?x64xf16>
}
// CHECK-LABEL: func.func @device_tensor_eps
// CHECK-NOT:     irfuse.rms_norm
// CHECK:         aten.call "aten.rsqrt.default"

// -----

// Malformed or degenerate input is left as it is: an rsqrt call with no operand, the
// norm chain of a 0-d tensor (no hidden dim).
// CHECK-LABEL: func.func @rsqrt_without_operands
// CHECK:         aten.call "aten.rsqrt.default"()
func.func @rsqrt_without_operands() -> tensor<4x1xf32> {
  %r = aten.call "aten.rsqrt.default"() {args = [], kwargs = {}} : () -> tensor<4x1xf32>
  func.return %r : tensor<4x1xf32>
}

// -----

// CHECK-LABEL: func.func @norm_of_a_0d_tensor
// CHECK-NOT:     irfuse.rms_norm
func.func @norm_of_a_0d_tensor(%x: tensor<f32>, %w: tensor<1xf32>) -> tensor<f32> {
  %p = aten.call "aten.pow.Tensor_Scalar"(%x) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %m = aten.call "aten.mean.dim"(%p) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %e = aten.call "aten.add.Scalar"(%m) {args = [#aten.ref<0>, 1.0e-06 : f64], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %r = aten.call "aten.rsqrt.default"(%e) {args = [#aten.ref<0>], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %n = aten.call "aten.mul.Tensor"(%x, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<f32>, tensor<f32>) -> tensor<f32>
  %y = aten.call "aten.mul.Tensor"(%n, %w) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<f32>, tensor<1xf32>) -> tensor<f32>
  func.return %y : tensor<f32>
}
