// RUN: irfuse-opt %s --split-input-file -p 'raise-dynamic-fp8-quant{standalone=true}' | filecheck %s
// RUN: irfuse-opt %s --split-input-file -p raise-dynamic-fp8-quant | filecheck %s --check-prefix=DEFAULT

// By default a quant is raised only where a producer can take it as its epilogue: none of
// the quants on a plain function argument is, the one after irfuse.rms_norm (last) is.
// DEFAULT-NOT: irfuse.quant
// DEFAULT-LABEL: func.func @after_rms_norm
// DEFAULT:         irfuse.quant %y {quant = #irfuse.quant<per_token>}

// Per token, AOT form: _to_copy, div by 448, clamp(min=1/(448*512)), aten.clamp(-448, 448).
func.func @per_token_aot(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @per_token_aot
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>

// -----

// Per tensor: amax over every dim (a 0-d scale, which the raised quant keeps), any rank.
func.func @per_tensor_aot(%x: tensor<2x4x256xbf16>) -> (tensor<2x4x256xf8E4M3FN>, tensor<f32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<2x4x256xbf16>) -> tensor<2x4x256xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<2x4x256xf32>) -> tensor<2x4x256xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>], kwargs = {}} : (tensor<2x4x256xf32>) -> tensor<f32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<f32>) -> tensor<f32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<2x4x256xf32>, tensor<f32>) -> tensor<2x4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<2x4x256xf32>) -> tensor<2x4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<2x4x256xf32>) -> tensor<2x4x256xf8E4M3FN>
  func.return %q, %s : tensor<2x4x256xf8E4M3FN>, tensor<f32>
}
// CHECK-LABEL: func.func @per_tensor_aot
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_tensor>} : tensor<2x4x256xbf16> -> tensor<2x4x256xf8E4M3FN>, tensor<f32>
// CHECK-NEXT:    func.return %q, %s : tensor<2x4x256xf8E4M3FN>, tensor<f32>

// -----

// Per token, Inductor form: convert_element_type, clamp_min, clamp_max + clamp_min; dynamic T.
func.func @per_token_inductor(%x: tensor<?x512xf16>) -> (tensor<?x512xf8E4M3FN>, tensor<?x1xf32>) {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x512xf16>) -> tensor<?x512xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x512xf32>) -> tensor<?x512xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x512xf32>) -> tensor<?x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %s = aten.call "aten.clamp_min.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<?x1xf32>) -> tensor<?x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x512xf32>, tensor<?x1xf32>) -> tensor<?x512xf32>
  %hi = aten.call "aten.clamp_max.default"(%xs) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x512xf32>) -> tensor<?x512xf32>
  %lo = aten.call "aten.clamp_min.default"(%hi) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<?x512xf32>) -> tensor<?x512xf32>
  %q = aten.call "prims.convert_element_type.default"(%lo) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<?x512xf32>) -> tensor<?x512xf8E4M3FN>
  func.return %q, %s : tensor<?x512xf8E4M3FN>, tensor<?x1xf32>
}
// CHECK-LABEL: func.func @per_token_inductor
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<?x512xf16> -> tensor<?x512xf8E4M3FN>, tensor<?x1xf32>
// CHECK-NEXT:    func.return %q, %s

// -----

// torchao's per-row scale (Inductor form): the bf16 amax divided by 448 in bf16, then
// widened, with no lower bound: `<per_token in_dtype>`, whose kernels round the scale alike.
func.func @per_token_in_dtype(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>) {
  %abs = aten.call "aten.abs.default"(%x) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x256xbf16>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x1xbf16>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xbf16>) -> tensor<4x1xbf16>
  %s = aten.call "prims.convert_element_type.default"(%d) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x1xbf16>) -> tensor<4x1xf32>
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %lo = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %hi = aten.call "aten.clamp_max.default"(%lo) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "prims.convert_element_type.default"(%hi) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @per_token_in_dtype
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token in_dtype>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>

// -----

// torchao's 1x128 activation scale (Inductor form): each group's bf16 amax divided by 448
// in bf16, viewed to [T, K/G], widened, then repeated along the row for the division.
func.func @per_group_in_dtype(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>) {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %xg = aten.call "aten.reshape.default"(%x) {args = [#aten.ref<0>, [4 : i64, 2 : i64, 128 : i64]], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x2x128xbf16>
  %abs = aten.call "aten.abs.default"(%xg) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x128xbf16>) -> tensor<4x2x128xbf16>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x2x128xbf16>) -> tensor<4x2x1xbf16>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x1xbf16>) -> tensor<4x2x1xbf16>
  %d2 = aten.call "aten.reshape.default"(%d) {args = [#aten.ref<0>, [4 : i64, 2 : i64]], kwargs = {}} : (tensor<4x2x1xbf16>) -> tensor<4x2xbf16>
  %s = aten.call "prims.convert_element_type.default"(%d2) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x2xbf16>) -> tensor<4x2xf32>
  %u = aten.call "aten.unsqueeze.default"(%s) {args = [#aten.ref<0>, 2 : i64], kwargs = {}} : (tensor<4x2xf32>) -> tensor<4x2x1xf32>
  %e = aten.call "aten.expand.default"(%u) {args = [#aten.ref<0>, [4 : i64, 2 : i64, 128 : i64]], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x128xf32>
  %c = aten.call "aten.clone.default"(%e) {args = [#aten.ref<0>], kwargs = {memory_format = "torch.contiguous_format"}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %r = aten.call "aten.reshape.default"(%c) {args = [#aten.ref<0>, [4 : i64, 256 : i64]], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x256xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %r) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x256xf32>) -> tensor<4x256xf32>
  %lo = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %hi = aten.call "aten.clamp_max.default"(%lo) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "prims.convert_element_type.default"(%hi) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
}
// CHECK-LABEL: func.func @per_group_in_dtype
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 128 in_dtype>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
// CHECK-NEXT:    func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x2xf32>

// -----

// Per token with an upper bound (torch.minimum) and `* (1/448)`; fp32 input, no cast.
func.func @per_token_scale_ub(%x: tensor<8x128xf32>, %ub: tensor<1xf32>) -> (tensor<8x128xf8E4M3FN>, tensor<8x1xf32>) {
  %abs = aten.call "aten.abs.default"(%x) {args = [#aten.ref<0>], kwargs = {}} : (tensor<8x128xf32>) -> tensor<8x128xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [1 : i64], true], kwargs = {}} : (tensor<8x128xf32>) -> tensor<8x1xf32>
  %min = aten.call "aten.minimum.default"(%amax, %ub) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x1xf32>, tensor<1xf32>) -> tensor<8x1xf32>
  %m = aten.call "aten.mul.Tensor"(%min) {args = [#aten.ref<0>, 0.002232142857142857 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %s = aten.call "aten.clamp_min.default"(%m) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<8x1xf32>) -> tensor<8x1xf32>
  %xs = aten.call "aten.div.Tensor"(%x, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<8x128xf32>, tensor<8x1xf32>) -> tensor<8x128xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -448 : i64, 448 : i64], kwargs = {}} : (tensor<8x128xf32>) -> tensor<8x128xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<8x128xf32>) -> tensor<8x128xf8E4M3FN>
  func.return %q, %s : tensor<8x128xf8E4M3FN>, tensor<8x1xf32>
}
// CHECK-LABEL: func.func @per_token_scale_ub
// CHECK-NEXT:    %q, %s = irfuse.quant %x scale %ub {quant = #irfuse.quant<per_token>} : tensor<8x128xf32>, tensor<1xf32> -> tensor<8x128xf8E4M3FN>, tensor<8x1xf32>
// CHECK-NEXT:    func.return %q, %s

// -----

// Inductor's forms of `amax.clamp(max=ub)` (clamp_max.Tensor) and of
// `torch.maximum(s, torch.tensor(1/(448*512)))` (a folded aten.full, rounded to fp32).
func.func @per_token_clamp_max_maximum(%x: tensor<4x64xbf16>, %ub: tensor<1xf32>) -> (tensor<4x64xf8E4M3FN>, tensor<4x1xf32>) {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %a = aten.call "aten.clamp_max.Tensor"(%amax, %ub) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x1xf32>, tensor<1xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %lo = aten.call "aten.full.default"() {args = [[], 4.3596542127488647e-06 : f64], kwargs = {dtype = f32}} : () -> tensor<f32>
  %s = aten.call "aten.maximum.default"(%d, %lo) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x1xf32>, tensor<f32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %l = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %h = aten.call "aten.clamp_max.default"(%l) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q, %s : tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @per_token_clamp_max_maximum
// CHECK-NEXT:    %q, %s = irfuse.quant %x scale %ub {quant = #irfuse.quant<per_token>} : tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s

// -----

// Per group 128, AOT form: .float().view(T, K/128, 128), clamp(min=1e-10) / 448,
// .view(T, K) of the fp8 result, squeeze(-1) of the scales.
func.func @per_group_128(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %xg = aten.call "aten.view.default"(%xf) {args = [#aten.ref<0>, [4 : i64, 2 : i64, 128 : i64]], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x2x128xf32>
  %abs = aten.call "aten.abs.default"(%xg) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x1xf32>
  %a = aten.call "aten.clamp.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %s = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xg, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x2x128xf32>, tensor<4x2x1xf32>) -> tensor<4x2x128xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %qg = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf8E4M3FN>
  %q = aten.call "aten.view.default"(%qg) {args = [#aten.ref<0>, [4 : i64, 256 : i64]], kwargs = {}} : (tensor<4x2x128xf8E4M3FN>) -> tensor<4x256xf8E4M3FN>
  %scales = aten.call "aten.squeeze.dim"(%s) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2xf32>
  func.return %q, %scales : tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
}
// CHECK-LABEL: func.func @per_group_128
// CHECK-NEXT:    %q, %scales = irfuse.quant %x {quant = #irfuse.quant<per_group 128>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
// CHECK-NEXT:    func.return %q, %scales

// -----

// Per group 64, Inductor form of x.unflatten(...).float(): reshape before the cast,
// clamp_min, clamp_min + clamp_max; dynamic T.
func.func @per_group_64(%x: tensor<?x256xbf16>, %t: i64) -> (tensor<?x256xf8E4M3FN>, tensor<?x4xf32>) {
  %xv = aten.call "aten.reshape.default"(%x, %t) {args = [#aten.ref<0>, [#aten.ref<1>, 4 : i64, 64 : i64]], kwargs = {}} : (tensor<?x256xbf16>, i64) -> tensor<?x4x64xbf16>
  %xg = aten.call "prims.convert_element_type.default"(%xv) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<?x4x64xbf16>) -> tensor<?x4x64xf32>
  %abs = aten.call "aten.abs.default"(%xg) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x4x64xf32>) -> tensor<?x4x64xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x4x64xf32>) -> tensor<?x4x1xf32>
  %a = aten.call "aten.clamp_min.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
  %s = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x4x1xf32>) -> tensor<?x4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xg, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x4x64xf32>, tensor<?x4x1xf32>) -> tensor<?x4x64xf32>
  %l = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<?x4x64xf32>) -> tensor<?x4x64xf32>
  %h = aten.call "aten.clamp_max.default"(%l) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x4x64xf32>) -> tensor<?x4x64xf32>
  %qg = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<?x4x64xf32>) -> tensor<?x4x64xf8E4M3FN>
  %q = aten.call "aten.reshape.default"(%qg, %t) {args = [#aten.ref<0>, [#aten.ref<1>, 256 : i64]], kwargs = {}} : (tensor<?x4x64xf8E4M3FN>, i64) -> tensor<?x256xf8E4M3FN>
  %scales = aten.call "aten.squeeze.dim"(%s) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<?x4x1xf32>) -> tensor<?x4xf32>
  func.return %q, %scales : tensor<?x256xf8E4M3FN>, tensor<?x4xf32>
}
// CHECK-LABEL: func.func @per_group_64
// CHECK-NEXT:    %q, %scales = irfuse.quant %x {quant = #irfuse.quant<per_group 64>} : tensor<?x256xbf16> -> tensor<?x256xf8E4M3FN>, tensor<?x4xf32>
// CHECK-NEXT:    func.return %q, %scales

// -----

// Power-of-two scales: exp2(ceil(log2(s))) -> ue8m0.
func.func @per_group_ue8m0(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x2xf32>) {
  %xf = aten.call "prims.convert_element_type.default"(%x) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %xg = aten.call "aten.reshape.default"(%xf) {args = [#aten.ref<0>, [4 : i64, 2 : i64, 128 : i64]], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x2x128xf32>
  %abs = aten.call "aten.abs.default"(%xg) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x1xf32>
  %a = aten.call "aten.clamp_min.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %d = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %l2 = aten.call "aten.log2.default"(%d) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %cl = aten.call "aten.ceil.default"(%l2) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %s = aten.call "aten.exp2.default"(%cl) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xg, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x2x128xf32>, tensor<4x2x1xf32>) -> tensor<4x2x128xf32>
  %l = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %h = aten.call "aten.clamp_max.default"(%l) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf32>
  %qg = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x2x128xf32>) -> tensor<4x2x128xf8E4M3FN>
  %q = aten.call "aten.reshape.default"(%qg) {args = [#aten.ref<0>, [4 : i64, 256 : i64]], kwargs = {}} : (tensor<4x2x128xf8E4M3FN>) -> tensor<4x256xf8E4M3FN>
  %scales = aten.call "aten.squeeze.dim"(%s) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2xf32>
  func.return %q, %scales : tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
}
// CHECK-LABEL: func.func @per_group_ue8m0
// CHECK-NEXT:    %q, %scales = irfuse.quant %x {quant = #irfuse.quant<per_group 128 ue8m0>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x2xf32>
// CHECK-NEXT:    func.return %q, %scales

// -----

// Group 96 is neither 64 nor 128: unchanged.
func.func @group_96(%x: tensor<4x192xbf16>) -> (tensor<4x192xf8E4M3FN>, tensor<4x2xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x192xbf16>) -> tensor<4x192xf32>
  %xg = aten.call "aten.view.default"(%xf) {args = [#aten.ref<0>, [4 : i64, 2 : i64, 96 : i64]], kwargs = {}} : (tensor<4x192xf32>) -> tensor<4x2x96xf32>
  %abs = aten.call "aten.abs.default"(%xg) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x2x96xf32>) -> tensor<4x2x96xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x2x96xf32>) -> tensor<4x2x1xf32>
  %a = aten.call "aten.clamp.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %s = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xg, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x2x96xf32>, tensor<4x2x1xf32>) -> tensor<4x2x96xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x2x96xf32>) -> tensor<4x2x96xf32>
  %qg = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x2x96xf32>) -> tensor<4x2x96xf8E4M3FN>
  %q = aten.call "aten.view.default"(%qg) {args = [#aten.ref<0>, [4 : i64, 192 : i64]], kwargs = {}} : (tensor<4x2x96xf8E4M3FN>) -> tensor<4x192xf8E4M3FN>
  %scales = aten.call "aten.squeeze.dim"(%s) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<4x2x1xf32>) -> tensor<4x2xf32>
  func.return %q, %scales : tensor<4x192xf8E4M3FN>, tensor<4x2xf32>
}
// CHECK-LABEL: func.func @group_96
// CHECK-NOT:     irfuse.quant
// CHECK:         aten.call "aten.amax.default"

// -----

// A lower clamp of the per-token scale other than 1/(448*512): unchanged.
func.func @other_lower_clamp(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 1.000000e-05 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @other_lower_clamp
// CHECK-NOT:     irfuse.quant
// CHECK:         aten.call "aten.amax.default"

// -----

// The amax is also read outside the quant: unchanged.
func.func @amax_used_elsewhere(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>, tensor<4x1xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s, %amax : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @amax_used_elsewhere
// CHECK-NOT:     irfuse.quant
// CHECK:         aten.call "aten.amax.default"

// -----

// Per token, the amax as torch.max's values without keepdim, put back by unsqueeze(-1),
// of the bf16 |x| widened to fp32 after; the division reads bf16 x promoted by the scale.
func.func @per_token_max_values_widened(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>) {
  %abs = aten.call "aten.abs.default"(%x) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xbf16>) -> tensor<4x256xbf16>
  %m, %i = aten.call "aten.max.dim"(%abs) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<4x256xbf16>) -> (tensor<4xbf16>, tensor<4xi64>)
  %mf = aten.call "aten._to_copy.default"(%m) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4xbf16>) -> tensor<4xf32>
  %a = aten.call "aten.unsqueeze.default"(%mf) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<4xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%a) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %xs = aten.call "aten.div.Tensor"(%xf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xf32>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @per_token_max_values_widened
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>

// -----

// The same amax; the division reads bf16 x itself, promoted by the fp32 scale.
func.func @per_token_promoted(%x: tensor<4x256xbf16>) -> (tensor<4x256xf8E4M3FN>, tensor<4x1xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<4x256xbf16>) -> tensor<4x256xf32>
  %abs = aten.call "aten.abs.default"(%xf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%x, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x256xbf16>, tensor<4x1xf32>) -> tensor<4x256xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x256xf32>) -> tensor<4x256xf32>
  %q = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<4x256xf32>) -> tensor<4x256xf8E4M3FN>
  func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @per_token_promoted
// CHECK-NEXT:    %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_token>} : tensor<4x256xbf16> -> tensor<4x256xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s : tensor<4x256xf8E4M3FN>, tensor<4x1xf32>

// -----

// Per group at a symbolic T and K: the importer marks a view that keeps its input's leading
// symbolic dims (irfuse.kept_dims); the types alone cannot tell [T, K/G, G] from a view
// that regroups the tokens ([2T, K/2G, G], whose scales are shaped otherwise).
func.func @per_group_symbolic_kept(%t: i64, %k: i64, %x: tensor<?x?xbf16>) -> (tensor<?x?xf8E4M3FN>, tensor<?x?xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<?x?xbf16>) -> tensor<?x?xf32>
  %g = aten.call "_operator.floordiv"(%k) {args = [#aten.ref<0>, 128 : i64], kwargs = {}} : (i64) -> i64
  %view = aten.call "aten.view.default"(%xf, %t, %g) {irfuse.kept_dims = 1 : i64, args = [#aten.ref<0>, [#aten.ref<1>, #aten.ref<2>, 128 : i64]], kwargs = {}} : (tensor<?x?xf32>, i64, i64) -> tensor<?x?x?xf32>
  %abs = aten.call "aten.abs.default"(%view) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x1xf32>
  %floor = aten.call "aten.clamp.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %d = aten.call "aten.div.Tensor"(%floor) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %xs = aten.call "aten.div.Tensor"(%view, %d) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x?x?xf32>, tensor<?x?x1xf32>) -> tensor<?x?x?xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf32>
  %q8 = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf8E4M3FN>
  %q = aten.call "aten.view.default"(%q8, %t, %k) {irfuse.kept_dims = 1 : i64, args = [#aten.ref<0>, [#aten.ref<1>, #aten.ref<2>]], kwargs = {}} : (tensor<?x?x?xf8E4M3FN>, i64, i64) -> tensor<?x?xf8E4M3FN>
  %s = aten.call "aten.squeeze.dim"(%d) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?xf32>
  func.return %q, %s : tensor<?x?xf8E4M3FN>, tensor<?x?xf32>
}
// CHECK-LABEL: func.func @per_group_symbolic_kept
// CHECK:         %q, %s = irfuse.quant %x {quant = #irfuse.quant<per_group 128>} : tensor<?x?xbf16> -> tensor<?x?xf8E4M3FN>, tensor<?x?xf32>
// CHECK-NEXT:    func.return %q, %s

// -----

func.func @per_group_symbolic_unmarked(%t: i64, %k: i64, %x: tensor<?x?xbf16>) -> (tensor<?x?xf8E4M3FN>, tensor<?x?xf32>) {
  %xf = aten.call "aten._to_copy.default"(%x) {args = [#aten.ref<0>], kwargs = {dtype = f32}} : (tensor<?x?xbf16>) -> tensor<?x?xf32>
  %g = aten.call "_operator.floordiv"(%k) {args = [#aten.ref<0>, 128 : i64], kwargs = {}} : (i64) -> i64
  %view = aten.call "aten.view.default"(%xf, %t, %g) {args = [#aten.ref<0>, [#aten.ref<1>, #aten.ref<2>, 128 : i64]], kwargs = {}} : (tensor<?x?xf32>, i64, i64) -> tensor<?x?x?xf32>
  %abs = aten.call "aten.abs.default"(%view) {args = [#aten.ref<0>], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x1xf32>
  %floor = aten.call "aten.clamp.default"(%amax) {args = [#aten.ref<0>, 1.000000e-10 : f64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %d = aten.call "aten.div.Tensor"(%floor) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?x1xf32>
  %xs = aten.call "aten.div.Tensor"(%view, %d) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<?x?x?xf32>, tensor<?x?x1xf32>) -> tensor<?x?x?xf32>
  %c = aten.call "aten.clamp.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64, 4.480000e+02 : f64], kwargs = {}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf32>
  %q8 = aten.call "aten._to_copy.default"(%c) {args = [#aten.ref<0>], kwargs = {dtype = f8E4M3FN}} : (tensor<?x?x?xf32>) -> tensor<?x?x?xf8E4M3FN>
  %q = aten.call "aten.view.default"(%q8, %t, %k) {args = [#aten.ref<0>, [#aten.ref<1>, #aten.ref<2>]], kwargs = {}} : (tensor<?x?x?xf8E4M3FN>, i64, i64) -> tensor<?x?xf8E4M3FN>
  %s = aten.call "aten.squeeze.dim"(%d) {args = [#aten.ref<0>, -1 : i64], kwargs = {}} : (tensor<?x?x1xf32>) -> tensor<?x?xf32>
  func.return %q, %s : tensor<?x?xf8E4M3FN>, tensor<?x?xf32>
}
// CHECK-LABEL: func.func @per_group_symbolic_unmarked
// CHECK-NOT:     irfuse.quant
// CHECK:         func.return %q, %s

// -----

// A quant of irfuse.rms_norm's result is raised by default too (its producer can take it).
func.func @after_rms_norm(%x: tensor<4x64xbf16>, %w: tensor<64xbf16>) -> (tensor<4x64xf8E4M3FN>, tensor<4x1xf32>) {
  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>
  %yf = aten.call "prims.convert_element_type.default"(%y) {args = [#aten.ref<0>, f32], kwargs = {}} : (tensor<4x64xbf16>) -> tensor<4x64xf32>
  %abs = aten.call "aten.abs.default"(%yf) {args = [#aten.ref<0>], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %amax = aten.call "aten.amax.default"(%abs) {args = [#aten.ref<0>, [-1 : i64], true], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x1xf32>
  %d = aten.call "aten.div.Tensor"(%amax) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %s = aten.call "aten.clamp_min.default"(%d) {args = [#aten.ref<0>, 4.3596540178571426e-06 : f64], kwargs = {}} : (tensor<4x1xf32>) -> tensor<4x1xf32>
  %xs = aten.call "aten.div.Tensor"(%yf, %s) {args = [#aten.ref<0>, #aten.ref<1>], kwargs = {}} : (tensor<4x64xf32>, tensor<4x1xf32>) -> tensor<4x64xf32>
  %l = aten.call "aten.clamp_min.default"(%xs) {args = [#aten.ref<0>, -4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %h = aten.call "aten.clamp_max.default"(%l) {args = [#aten.ref<0>, 4.480000e+02 : f64], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf32>
  %q = aten.call "prims.convert_element_type.default"(%h) {args = [#aten.ref<0>, f8E4M3FN], kwargs = {}} : (tensor<4x64xf32>) -> tensor<4x64xf8E4M3FN>
  func.return %q, %s : tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
}
// CHECK-LABEL: func.func @after_rms_norm
// CHECK-NEXT:    %y = irfuse.rms_norm
// CHECK-NEXT:    %q, %s = irfuse.quant %y {quant = #irfuse.quant<per_token>} : tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>
// CHECK-NEXT:    func.return %q, %s
