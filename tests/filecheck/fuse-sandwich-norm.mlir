// RUN: irfuse-opt %s --split-input-file -p fuse-add-rms-norm,fuse-sandwich-norm,fuse-rms-norm-quant | filecheck %s
// RUN: irfuse-opt %s --split-input-file -p fuse-add-rms-norm,fuse-sandwich-norm,fuse-rms-norm-quant -t triton | filecheck %s --check-prefix=TRITON

// Gemma's post-attention norm, the residual add, the pre-feedforward norm and its quant:
// one op, whose kernel normalises x first (x_weight, x_eps), whichever addend it was.
func.func @gemma_sandwich(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %p = irfuse.rms_norm %x, %w1 {eps = 1.0e-05 : f64, gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%r, %p) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64, gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %q, %qs = irfuse.quant %y {quant = #irfuse.quant<per_token>} : tensor<?x64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x1xf32>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @gemma_sandwich
// CHECK-NEXT:    %q, %h, %qs = irfuse.fused_add_rms_norm %x, %r, %w2 x_weight(%w1 : tensor<64xbf16>) {eps = 1.000000e-06 : f64, gemma, rounded_sum, x_eps = 1.000000e-05 : f64, quant = #irfuse.quant<per_token>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>, tensor<?x1xf32>
// CHECK-NEXT:    func.return %q, %h

// The generated kernel names what it fuses, loads the residual before x's own norm and
// normalises x with its own weight and eps.
// TRITON:      Fuses: rms_norm of x + add (the sum rounded to the model dtype) + rms_norm (gemma weight) + per_token fp8 quant.
// Every rounding to the model dtype is inline PTX that LLVM cannot fold into the add
// after it (an FMA would round once where the graph rounds twice); bf16 and fp16 round
// two elements per conversion.
// TRITON:      def round_to(
// TRITON:          "{ .reg .b32 pair; cvt.rn.bf16x2.f32 pair, $3, $2; "
// TRITON:          "mov.b32 $0, $1;", "=r,r", [v.to(dtype).to(tl.float32)], dtype=tl.float32,
// TRITON:      def irfuse_normed_add_rounded_rms_norm_gemmaw_per_token_fp8(
// TRITON:        residual = widened(tl.load(residual_row + cols
// TRITON:        x_w = tl.load(x_weight_ptr + cols
// TRITON-NEXT:   x_rstd = tl.rsqrt(tl.sum(v * v) / n_cols + tl.cast(x_eps, tl.float32))
// TRITON-NEXT:   v = round_to(v * x_rstd * (1.0 + widened(x_w, INTERPRET)), model_dtype, INTERPRET)
// TRITON:        # residual add

// -----

// The first norm multiplies its weight in another form: two kernels, with the reason.
func.func @different_forms(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>) -> tensor<?x64xbf16> {
  %p = irfuse.rms_norm %x, %w1 {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%p, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64, gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  func.return %y : tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @different_forms
// CHECK-NEXT:    %p = irfuse.rms_norm %x, %w1
// CHECK-NEXT:    %y, %h = irfuse.fused_add_rms_norm %p, %r, %w2 {eps = 1.000000e-06 : f64, gemma, rounded_sum}

// -----

// The first norm's result is also returned: it is written anyway, the add + norm fuse alone.
func.func @first_norm_read_twice(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>) -> (tensor<?x64xbf16>, tensor<?x64xbf16>) {
  %p = irfuse.rms_norm %x, %w1 {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%p, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  func.return %y, %p : tensor<?x64xbf16>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @first_norm_read_twice
// CHECK-NEXT:    %p = irfuse.rms_norm %x, %w1
// CHECK-NEXT:    %y, %h = irfuse.fused_add_rms_norm %p, %r, %w2 {eps = 1.000000e-06 : f64, rounded_sum}

// -----

// The first norm's eps is read at run time (what `dynamic=True` makes of a module's): the
// kernel reads it at each launch too.
func.func @runtime_eps(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>, %eps: tensor<f64> {irfuse.host_scalar}) -> tensor<?x64xbf16> {
  %p = irfuse.rms_norm %x, %w1 eps(%eps : tensor<f64>) {gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%p, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64, gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  func.return %y : tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @runtime_eps
// CHECK-NEXT:    %y, %h = irfuse.fused_add_rms_norm %x, %r, %w2 x_weight(%w1 : tensor<64xbf16>) x_eps(%eps : tensor<f64>) {eps = 1.000000e-06 : f64, gemma, rounded_sum} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %y

// -----

// A plain-weight (HF) sandwich: x's norm rounds twice (after rstd, after the weight) and
// its kernel keeps both roundings apart from the add (kernels/norm.py ROUND_TO).
func.func @plain_sandwich(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>) -> tensor<?x64xbf16> {
  %p = irfuse.rms_norm %x, %w1 {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%p, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  func.return %y : tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @plain_sandwich
// CHECK-NEXT:    %y, %h = irfuse.fused_add_rms_norm %x, %r, %w2 x_weight(%w1 : tensor<64xbf16>) {eps = 1.000000e-06 : f64, rounded_sum, x_eps = 1.000000e-06 : f64} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %y

// -----

// The second norm unrounded (Inductor on CUDA folds its round trip through bf16 before
// the quant's fp32 cast): the fused op keeps `unrounded`, x's norm still rounds to bf16.
func.func @unrounded_second_norm(%x: tensor<?x64xbf16>, %r: tensor<?x64xbf16>, %w1: tensor<64xbf16>, %w2: tensor<64xbf16>, %s: tensor<1xf32>) -> (tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>) {
  %p = irfuse.rms_norm %x, %w1 {eps = 1.0e-06 : f64, gemma} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xbf16>
  %h = aten.call "aten.add.Tensor"(%r, %p) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x64xbf16>, tensor<?x64xbf16>) -> tensor<?x64xbf16>
  %y = irfuse.rms_norm %h, %w2 {eps = 1.0e-06 : f64, gemma, unrounded} : tensor<?x64xbf16>, tensor<64xbf16> -> tensor<?x64xf32>
  %q = irfuse.quant %y scale %s {quant = #irfuse.quant<static div>} : tensor<?x64xf32>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>
  func.return %q, %h : tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
}
// CHECK-LABEL: func.func @unrounded_second_norm
// CHECK-NEXT:    %q, %h = irfuse.fused_add_rms_norm %x, %r, %w2 x_weight(%w1 : tensor<64xbf16>) scale %s {eps = 1.000000e-06 : f64, gemma, unrounded, rounded_sum, x_eps = 1.000000e-06 : f64, quant = #irfuse.quant<static div>} : tensor<?x64xbf16>, tensor<?x64xbf16>, tensor<64xbf16>, tensor<1xf32> -> tensor<?x64xf8E4M3FN>, tensor<?x64xbf16>
// CHECK-NEXT:    func.return %q, %h
// TRITON:      def irfuse_normed_add_rounded_rms_norm_gemmaw_f32out_static_div_fp8(
// TRITON:        # epilogue: static per-tensor fp8, q = fp8(clamp(v / scale, -448, 448))
// TRITON-NEXT:   tl.store(out_ptr + row * out_row_stride + cols, to_fp8(div_by(v, scale, inv_scale), INTERPRET), mask=mask)
