// RUN: irfuse-opt %s --split-input-file -p fuse-norm-add-quant | filecheck %s
// RUN: irfuse-opt %s --split-input-file -p fuse-norm-add-quant -t triton | filecheck %s --check-prefix=TRITON

// OLMo 2's post-norm: the norm (fp32 weight), the residual add, and the next projection's
// quant of the sum: one op, whose residual_out is the sum the next block adds to.
func.func @post_norm(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w: tensor<64xbf16>) -> (tensor<?x64xf8E4M3FN>, tensor<?x1xf32>, tensor<?x64xbf16>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64, fp32_weight_mul} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%r, %y) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %h {quant = #irfuse.quant<per_token>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
  func.return %q, %qs, %h : tensor<?x64xf8E4M3FN>, tensor<?x1xf32>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @post_norm
// CHECK-NEXT:    %q, %h, %qs = irfuse.rms_norm_add %x, %r, %w {eps = 1.000000e-06 : f64, fp32_weight_mul, quant = #irfuse.quant<per_token>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>, tensor<?x1xf32>
// CHECK-NEXT:    func.return %q, %qs, %h

// The kernel normalises x, adds the residual after the norm, stores the rounded sum and
// quantizes that.
// TRITON:      Fuses: rms_norm (fp32 weight) + add (the sum rounded to the model dtype) + per_token fp8 quant.
// TRITON:      def irfuse_rms_norm_add_fp32w_per_token_fp8(
// TRITON:        residual = widened(tl.load(residual_row + cols
// TRITON:        rstd = tl.rsqrt(
// TRITON:        v = round_to(v * rstd * widened(w, INTERPRET), norm_dtype, INTERPRET)
// TRITON:        # residual add
// TRITON-NEXT:   v += residual
// TRITON:        residual_out_ptr + row * residual_out_row_stride + cols,
// TRITON:        v = round_to(v, model_dtype, INTERPRET)  # the norm reads the rounded sum
// TRITON:        # epilogue: dynamic per-token fp8

// -----

// A static scale, and the norm as the add's first addend: the scale is the op's.
func.func @static_scale(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-05 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%y, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %q = irfuse.quant %h scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
  func.return %q, %h : tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>
}
// CHECK-LABEL: func.func @static_scale
// CHECK-NEXT:    %q, %h = irfuse.rms_norm_add %x, %r, %w scale %s {eps = 1.000000e-05 : f64, quant = #irfuse.quant<static>}
// CHECK-NEXT:    func.return %q, %h

// -----

// The norm's result is also returned: it is written anyway; nothing fuses.
func.func @norm_read_twice(%x: tensor<4x64xbf16>, %r: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-05 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%y, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<4x64xbf16>) -> tensor<4x64xbf16>
  %q = irfuse.quant %h scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
  func.return %q, %y : tensor<4x64xf8E4M3FN>, tensor<4x64xbf16>
}
// CHECK-LABEL: func.func @norm_read_twice
// CHECK-NEXT:    %y = irfuse.rms_norm %x, %w
// CHECK-NEXT:    %h = aten.call "aten.add.Tensor"(%y, %r)
// CHECK-NEXT:    %q = irfuse.quant %h scale %s

// -----

// An add that broadcasts a row (a bias, not a residual): no post-norm.
func.func @broadcast(%x: tensor<4x64xbf16>, %b: tensor<64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>) -> tensor<4x64xf8E4M3FN> {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-05 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  %h = aten.call "aten.add.Tensor"(%y, %b) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xbf16>, tensor<64xbf16>) -> tensor<4x64xbf16>
  %q = irfuse.quant %h scale %s {quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>
  func.return %q : tensor<4x64xf8E4M3FN>
}
// CHECK-LABEL: func.func @broadcast
// CHECK-NEXT:    %y = irfuse.rms_norm %x, %w
// CHECK-NEXT:    %h = aten.call "aten.add.Tensor"(%y, %b)
